//! Who may change a group: the one permission table (docs/protocol.md shows the same table),
//! as a pure function of the actor's role, the action and the target's role. No IO.
//!
//! | action                          | owner | admin | member |
//! |---------------------------------|-------|-------|--------|
//! | send, read, leave               | yes   | yes   | yes (the owner leaves only by handing ownership over) |
//! | rename                          | yes   | yes   | no     |
//! | add members                     | yes   | yes   | no     |
//! | remove a member                 | yes   | yes   | no     |
//! | remove an admin                 | yes   | no    | no     |
//! | make admin / make member        | yes   | no    | no     |
//! | transfer ownership              | yes   | no    | no     |
//! | delete the group                | yes   | no    | no     |
//!
//! Nobody removes the owner or changes their own role.

use crate::error::{Error, Result};
use crate::model::{GroupAction, Role, UserId};

fn refuse(message: &str) -> Error {
    Error::forbidden(message.to_owned())
}

/// Whether `actor` (of role `actor_role`) may do `action`; `target_role` is the role of the
/// user the action names (None: not a current member).
pub fn check(actor: UserId, actor_role: Role, action: &GroupAction, target_role: Option<Role>) -> Result<()> {
    use GroupAction::*;
    use Role::*;
    let admin_or_owner = matches!(actor_role, Owner | Admin);
    match action {
        Create => Ok(()),
        Rename { .. } if admin_or_owner => Ok(()),
        Rename { .. } => Err(refuse("only the owner or an admin may rename the group")),
        Add { .. } if admin_or_owner => Ok(()),
        Add { .. } => Err(refuse("only the owner or an admin may add members")),
        Remove { user } if *user == actor => Err(Error::bad_request("to remove yourself, leave the group")),
        Remove { .. } => match (actor_role, target_role) {
            (_, None) => Err(Error::not_found("that user is not a member of the group")),
            (_, Some(Owner)) => Err(refuse("nobody can remove the group's owner")),
            (Owner, Some(_)) | (Admin, Some(Member)) => Ok(()),
            (Admin, Some(Admin)) => Err(refuse("only the owner may remove an admin")),
            _ => Err(refuse("only the owner or an admin may remove members")),
        },
        Leave if actor_role == Owner => {
            Err(refuse("the owner cannot leave: transfer ownership first, or delete the group"))
        }
        Leave => Ok(()),
        SetRole { user, .. } if *user == actor => Err(refuse("you cannot change your own role")),
        SetRole { .. } if actor_role != Owner => Err(refuse("only the owner may change roles")),
        SetRole { .. } if target_role.is_none() => {
            Err(Error::not_found("that user is not a member of the group"))
        }
        SetRole { .. } => Ok(()),
        Delete if actor_role == Owner => Ok(()),
        Delete => Err(refuse("only the owner may delete the group")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn code(actor_role: Role, action: &GroupAction, target: Option<Role>) -> Option<ErrorCode> {
        let actor = UserId::from_bytes([1; 16]);
        check(actor, actor_role, action, target).err().map(|e| e.code)
    }

    #[test]
    fn the_permission_table() {
        use GroupAction::*;
        use Role::*;
        let other = UserId::from_bytes([2; 16]);
        let me = UserId::from_bytes([1; 16]);
        let forbidden = Some(ErrorCode::Forbidden);
        let rename = Rename { title: "t".into() };
        let add = Add { users: vec![other] };
        let remove = Remove { user: other };
        let promote = SetRole { user: other, role: Admin };
        let transfer = SetRole { user: other, role: Owner };
        // (action, target role, owner, admin, member)
        let table: Vec<(&GroupAction, Option<Role>, bool, bool, bool)> = vec![
            (&rename, None, true, true, false),
            (&add, None, true, true, false),
            (&remove, Some(Member), true, true, false),
            (&remove, Some(Admin), true, false, false),
            (&remove, Some(Owner), false, false, false),
            (&promote, Some(Member), true, false, false),
            (&transfer, Some(Admin), true, false, false),
            (&Delete, None, true, false, false),
            (&Leave, None, false, true, true),
        ];
        for (action, target, owner, admin, member) in table {
            for (role, allowed) in [(Owner, owner), (Admin, admin), (Member, member)] {
                let got = code(role, action, target);
                if allowed {
                    assert_eq!(got, None, "{role:?} may {action:?} on {target:?}");
                } else {
                    assert_eq!(got, forbidden, "{role:?} may not {action:?} on {target:?}");
                }
            }
        }
        // Self-targeted and unknown targets get their own errors.
        assert_eq!(code(Owner, &Remove { user: me }, Some(Owner)), Some(ErrorCode::BadRequest));
        assert_eq!(code(Owner, &SetRole { user: me, role: Admin }, Some(Owner)), forbidden);
        assert_eq!(code(Owner, &remove, None), Some(ErrorCode::NotFound));
        assert_eq!(code(Owner, &promote, None), Some(ErrorCode::NotFound));
    }
}
