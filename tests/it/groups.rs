//! Groups end to end against the real binary with real WebSocket clients: every permission
//! rule allowed and refused with its typed error, membership changes as system messages,
//! removal (live, sync, history, receipts, the conversation list), re-adding, coalesced
//! receipt pushes, the member limit, and a 1,000-member group delivering every message to every
//! online member exactly once. Key rotation is checked in-process on the stored bytes.

use super::harness::{Account, Api, Server, Ws, all_messages};
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Creates a group of `owner` with `members`; its id.
async fn create(api: &Api, owner: &Account, title: &str, members: &[&Account]) -> String {
    let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
    let (status, v) = api
        .post("/v1/conversations/group", Some(&owner.token), json!({"title": title, "members": ids}))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["kind"], "group");
    v["conversation_id"].as_str().unwrap().to_owned()
}

/// A change's status and its error code (if any).
async fn change(api: &Api, who: &Account, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let (status, v) = api.call(method, path, &who.token, body).await;
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

fn system_events(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["kind"] == "system")
        .map(|m| {
            serde_json::from_str::<Value>(m["body"].as_str().unwrap()).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn role_of(api: &Api, group: &str, viewer: &Account, user: &Account) -> Option<String> {
    let (status, v) = api.get(&format!("/v1/conversations/{group}/members"), Some(&viewer.token)).await;
    assert_eq!(status, 200, "{v}");
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == user.user_id)
        .map(|m| m["role"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_permission_rule_is_allowed_or_refused_with_its_error() {
    let server = Server::start().await;
    let api = server.api();
    let [owner, admin, admin2, member, member2, outsider, stranger] =
        ["owner", "admin", "admin2", "member", "member2", "outsider", "stranger"].map(|n| api.register(n));
    let (owner, admin, admin2, member, member2, outsider, stranger) =
        (owner.await, admin.await, admin2.await, member.await, member2.await, outsider.await, stranger.await);
    let g = create(&api, &owner, "team", &[&admin, &admin2, &member, &member2]).await;
    let members = format!("/v1/conversations/{g}/members");
    let role = |u: &Account| format!("/v1/conversations/{g}/members/{}/role", u.user_id);
    let one = |u: &Account| format!("/v1/conversations/{g}/members/{}", u.user_id);
    let group = format!("/v1/conversations/{g}");

    // Roles: only the owner changes them.
    assert_eq!(
        change(&api, &member, "PUT", &role(&admin), Some(json!({"role":"admin"}))).await,
        (403, "forbidden".into())
    );
    for a in [&admin, &admin2] {
        assert_eq!(change(&api, &owner, "PUT", &role(a), Some(json!({"role":"admin"}))).await.0, 200);
    }
    assert_eq!(
        change(&api, &admin, "PUT", &role(&member), Some(json!({"role":"admin"}))).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        change(&api, &owner, "PUT", &role(&owner), Some(json!({"role":"member"}))).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        change(&api, &owner, "PUT", &role(&admin), Some(json!({"role":"admin"}))).await,
        (409, "conflict".into())
    );
    assert_eq!(
        change(&api, &owner, "PUT", &role(&admin), Some(json!({"role":"king"}))).await,
        (400, "bad_request".into())
    );
    assert_eq!(role_of(&api, &g, &member, &admin).await.as_deref(), Some("admin"));

    // Rename: owner and admins.
    let title = |t: &str| Some(json!({"title": t}));
    assert_eq!(change(&api, &member, "PATCH", &group, title("nope")).await, (403, "forbidden".into()));
    assert_eq!(change(&api, &admin, "PATCH", &group, title("renamed by admin")).await.0, 200);
    assert_eq!(change(&api, &owner, "PATCH", &group, title("renamed")).await.0, 200);
    assert_eq!(change(&api, &owner, "PATCH", &group, title("   ")).await, (400, "bad_request".into()));

    // Add: owner and admins; an existing member is a conflict; an unknown user not found.
    let add = |u: &Account| Some(json!({"user_ids": [u.user_id]}));
    assert_eq!(change(&api, &member, "POST", &members, add(&outsider)).await, (403, "forbidden".into()));
    assert_eq!(change(&api, &admin, "POST", &members, add(&outsider)).await.0, 200);
    assert_eq!(change(&api, &admin, "POST", &members, add(&outsider)).await, (409, "conflict".into()));
    let ghost = Some(json!({"user_ids": ["01890a5d-ac96-774b-bcce-b302099a8057"]}));
    assert_eq!(change(&api, &owner, "POST", &members, ghost).await, (404, "not_found".into()));

    // Remove: admins remove members only; the owner removes admins; nobody removes the owner.
    assert_eq!(change(&api, &member, "DELETE", &one(&member2), None).await, (403, "forbidden".into()));
    assert_eq!(change(&api, &admin, "DELETE", &one(&admin2), None).await, (403, "forbidden".into()));
    assert_eq!(change(&api, &admin, "DELETE", &one(&owner), None).await, (403, "forbidden".into()));
    assert_eq!(change(&api, &admin, "DELETE", &one(&member2), None).await.0, 200);
    assert_eq!(change(&api, &admin, "DELETE", &one(&member2), None).await, (404, "not_found".into()));
    assert_eq!(change(&api, &owner, "DELETE", &one(&admin2), None).await.0, 200);

    // Leave: anyone but the owner.
    assert_eq!(
        change(&api, &owner, "POST", &format!("{group}/leave"), None).await,
        (403, "forbidden".into())
    );
    assert_eq!(change(&api, &outsider, "POST", &format!("{group}/leave"), None).await.0, 200);

    // Outsiders: no members list, no changes; unknown groups are not found.
    let (status, _) = api.get(&members, Some(&stranger.token)).await;
    assert_eq!(status, 403);
    assert_eq!(change(&api, &stranger, "PATCH", &group, title("x")).await, (403, "forbidden".into()));
    let unknown = "/v1/conversations/01890a5d-ac96-774b-bcce-b302099a8057";
    assert_eq!(change(&api, &owner, "PATCH", unknown, title("x")).await, (404, "not_found".into()));

    // Ownership: only the owner hands it over; then the former owner is an admin.
    assert_eq!(
        change(&api, &admin, "PUT", &role(&member), Some(json!({"role":"owner"}))).await,
        (403, "forbidden".into())
    );
    assert_eq!(change(&api, &owner, "PUT", &role(&admin), Some(json!({"role":"owner"}))).await.0, 200);
    assert_eq!(role_of(&api, &g, &member, &admin).await.as_deref(), Some("owner"));
    assert_eq!(role_of(&api, &g, &member, &owner).await.as_deref(), Some("admin"));

    // Delete: only the owner.
    assert_eq!(change(&api, &owner, "DELETE", &group, None).await, (403, "forbidden".into()));
    assert_eq!(change(&api, &member, "DELETE", &group, None).await, (403, "forbidden".into()));

    // Every change is a system message, in order, in everyone's history.
    let history = all_messages(&api, &g, &member.token).await;
    assert_eq!(
        system_events(&history),
        [
            "group_created",
            "role_changed",
            "role_changed",
            "renamed",
            "renamed",
            "members_added",
            "member_removed",
            "member_removed",
            "member_left",
            "ownership_transferred",
        ]
    );
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless seqs");

    assert_eq!(change(&api, &admin, "DELETE", &group, None).await.0, 200);
    let (status, _) = api.get(&format!("{group}/messages"), Some(&member.token)).await;
    assert_eq!(status, 404, "a deleted group is gone");
    let (_, list) = api.get("/v1/conversations", Some(&member.token)).await;
    assert!(!list.to_string().contains(&g), "a deleted group leaves the list");
}

#[tokio::test]
async fn a_group_is_bounded_by_its_member_limit() {
    let server = Server::start_env(&[("SWITCHBOARD_GROUP_MAX_MEMBERS", "3")]).await;
    let api = server.api();
    let (a, b, c, d) = (
        api.register("aaa1").await,
        api.register("bbb1").await,
        api.register("ccc1").await,
        api.register("ddd1").await,
    );
    let ids = json!({"title": "big", "members": [b.user_id, c.user_id, d.user_id]});
    let (status, v) = api.post("/v1/conversations/group", Some(&a.token), ids).await;
    assert_eq!((status, v["error"]["code"].as_str()), (413, Some("too_large")), "{v}");
    let g = create(&api, &a, "small", &[&b, &c]).await;
    let (status, code) = change(
        &api,
        &a,
        "POST",
        &format!("/v1/conversations/{g}/members"),
        Some(json!({"user_ids": [d.user_id]})),
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
}

/// Connects and syncs (so live messages of every conversation are pushed).
async fn online(server: &Server, account: &Account) -> Ws {
    let mut ws = Ws::connect(server, account).await;
    ws.send(json!({"type": "sync", "id": "s", "cursors": {}})).await;
    ws.expect("sync_done").await;
    ws
}

#[tokio::test]
async fn a_removed_member_stops_receiving_at_once_and_reads_only_up_to_the_removal() {
    let server = Server::start().await;
    let api = server.api();
    let (owner, member, removed) =
        (api.register("own").await, api.register("mem").await, api.register("rem").await);
    let g = create(&api, &owner, "crew", &[&member, &removed]).await;
    let (mut o, mut m, mut r) =
        (online(&server, &owner).await, online(&server, &member).await, online(&server, &removed).await);
    o.send_message(&g, "before", "before the removal").await;
    assert_eq!(r.expect("message").await["body"], "before the removal");
    assert_eq!(m.expect("message").await["body"], "before the removal");

    let (status, v) = api
        .call("DELETE", &format!("/v1/conversations/{g}/members/{}", removed.user_id), &owner.token, None)
        .await;
    assert_eq!(status, 200, "{v}");
    let removal = v["seq"].as_u64().unwrap();
    let seen = r.expect("message").await;
    assert_eq!(
        (seen["kind"].as_str(), seen["seq"].as_u64()),
        (Some("system"), Some(removal)),
        "told live: {seen}"
    );

    let after = o.send_message(&g, "after", "after the removal").await["seq"].as_u64().unwrap();
    let mut bodies = Vec::new();
    while bodies.last().is_none_or(|b| b != "after the removal") {
        bodies.push(m.expect("message").await["body"].as_str().unwrap().to_owned());
    }
    assert!(bodies[0].contains("member_removed"), "{bodies:?}");
    r.expect_none("message", Duration::from_millis(500)).await;

    // Cannot send, nor mark read, nor see who read what came later.
    r.send(json!({"type":"send","id":"x","conversation_id":g,"client_msg_id":"x","body":"let me in"})).await;
    assert_eq!(r.expect("error").await["code"], "forbidden");
    let (status, _) =
        api.get(&format!("/v1/conversations/{g}/messages/{after}/receipts"), Some(&removed.token)).await;
    assert_eq!(status, 403);
    let (status, _) = api.get(&format!("/v1/conversations/{g}/members"), Some(&removed.token)).await;
    assert_eq!(status, 403);

    // History and sync stop at the removal; the list shows the group as left.
    let history = all_messages(&api, &g, &removed.token).await;
    assert_eq!(history.last().unwrap()["seq"].as_u64(), Some(removal), "{history:?}");
    assert!(!history.iter().any(|m| m["body"] == "after the removal"));
    // (A fresh connection: one connection never resends what it delivered.)
    let mut r = Ws::connect(&server, &removed).await;
    r.send(json!({"type": "sync", "id": "s2", "cursors": {g.clone(): 0}})).await;
    let mut synced = Vec::new();
    loop {
        let f = r.next().await;
        match f["type"].as_str() {
            Some("message") => synced.push(f["seq"].as_u64().unwrap()),
            Some("sync_done") => {
                assert_eq!(f["conversations"][&g]["last_seq"].as_u64(), Some(removal), "{f}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(synced, (1..=removal).collect::<Vec<_>>(), "sync reads up to the removal only");
    let (_, list) = api.get("/v1/conversations", Some(&removed.token)).await;
    let entry = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == g.as_str())
        .unwrap()
        .clone();
    assert_eq!((entry["left"].as_bool(), entry["last_seq"].as_u64()), (Some(true), Some(removal)), "{entry}");
    assert_ne!(entry["last_message"]["body"], "after the removal");

    // Added again: from the re-adding message on, never what was sent while away.
    let (status, v) = api
        .post(
            &format!("/v1/conversations/{g}/members"),
            Some(&owner.token),
            json!({"user_ids": [removed.user_id]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let readded = v["seq"].as_u64().unwrap();
    o.send_message(&g, "back", "welcome back").await;
    let history = all_messages(&api, &g, &removed.token).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![readded, readded + 1], "a member reads from the message that added them");
    drop((o, m, r));
}

#[tokio::test]
async fn group_receipts_are_pushed_together_and_say_who_read() {
    let server = Server::start().await;
    let api = server.api();
    let owner = api.register("boss").await;
    let mut readers = Vec::new();
    for i in 0..5 {
        readers.push(api.register(&format!("reader{i}")).await);
    }
    let g = create(&api, &owner, "readers", &readers.iter().collect::<Vec<_>>()).await;
    let mut o = online(&server, &owner).await;
    let mut sockets = Vec::new();
    for r in &readers {
        sockets.push(online(&server, r).await);
    }
    let seq = o.send_message(&g, "q", "did you read this?").await["seq"].as_u64().unwrap();
    for ws in &mut sockets {
        ws.expect("message").await;
        ws.send(json!({"type": "read", "conversation_id": g, "seq": seq})).await;
    }
    // The owner hears of all five reads in few `receipts` frames, never one `receipt` each.
    let mut heard: HashMap<String, u64> = HashMap::new();
    let mut frames = 0;
    while heard.len() < readers.len() {
        let f = o.next().await;
        assert_ne!(f["type"], "receipt", "a group's receipts come batched: {f}");
        if f["type"] == "receipts" {
            frames += 1;
            for r in f["receipts"].as_array().unwrap() {
                heard.insert(r["user_id"].as_str().unwrap().to_owned(), r["read_seq"].as_u64().unwrap());
            }
        }
    }
    assert!(frames <= 3, "{frames} receipts frames for 5 reads");
    assert!(heard.values().all(|&s| s == seq));
    let (status, v) =
        api.get(&format!("/v1/conversations/{g}/messages/{seq}/receipts"), Some(&owner.token)).await;
    assert_eq!(status, 200, "{v}");
    let read_by: Vec<&str> = v["read_by"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    for r in &readers {
        assert!(read_by.contains(&r.user_id.as_str()), "{v}");
    }
    // The conversation list counts unread messages in a group as in a direct conversation.
    let (_, list) = api.get("/v1/conversations", Some(&readers[0].token)).await;
    let entry = &list["conversations"][0];
    assert_eq!(
        (entry["kind"].as_str(), entry["unread"].as_u64(), entry["role"].as_str()),
        (Some("group"), Some(0), Some("member"))
    );
    assert_eq!(entry["title"], "readers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_member_group_delivers_every_message_to_every_online_member_once() {
    const MEMBERS: usize = 1000;
    const MESSAGES: usize = 5;
    let _heavy = super::harness::HEAVY.lock().await;
    let server = Arc::new(Server::start_env(&[("SWITCHBOARD_RATE_PER_SEC", "1000")]).await);
    let api = Arc::new(server.api());
    let started = std::time::Instant::now();
    let mut accounts = Vec::new();
    for chunk in (0..MEMBERS).collect::<Vec<_>>().chunks(16) {
        let batch = chunk.iter().map(|i| {
            let api = api.clone();
            async move { api.register(&format!("m{i:04}")).await }
        });
        accounts.extend(futures_util::future::join_all(batch).await);
    }
    let registered = started.elapsed();
    let mut sockets = Vec::new();
    for chunk in accounts.chunks(50) {
        let batch = chunk.iter().map(|a| {
            let server = server.clone();
            async move { online(&server, a).await }
        });
        sockets.extend(futures_util::future::join_all(batch).await);
    }
    let owner = &accounts[0];
    let others: Vec<&Account> = accounts[1..].iter().collect();
    let g = create(&api, owner, "everyone", &others).await;
    let (status, v) = api.get(&format!("/v1/conversations/{g}/members"), Some(&owner.token)).await;
    assert_eq!((status, v["members"].as_array().unwrap().len()), (200, MEMBERS));
    let mut sender = sockets.remove(0);
    for i in 0..MESSAGES {
        sender.send_message(&g, &format!("c{i}"), &format!("hello {i}")).await;
    }
    let sent_at = std::time::Instant::now();
    // Every other member: the creation message, then the five, each once and in order.
    let receive = sockets.into_iter().map(|mut ws| {
        let g = g.clone();
        async move {
            let mut seqs = Vec::new();
            while seqs.len() < MESSAGES + 1 {
                match ws.next_within(Duration::from_secs(30)).await {
                    Some(f) if f["type"] == "message" && f["conversation_id"] == g.as_str() => {
                        seqs.push(f["seq"].as_u64().unwrap())
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            ws.close().await;
            seqs
        }
    });
    let all = futures_util::future::join_all(receive).await;
    let expected: Vec<u64> = (1..=(MESSAGES as u64 + 1)).collect();
    let wrong: Vec<&Vec<u64>> = all.iter().filter(|s| **s != expected).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} members got something else, e.g. {:?}",
        wrong.len(),
        all.len(),
        wrong.first()
    );
    eprintln!(
        "1,000-member group: registered in {registered:?}; {} deliveries received {:?} after the last send",
        all.len() * (MESSAGES + 1),
        sent_at.elapsed()
    );
}

async fn slow_consumers_closed(server: &Server) -> u64 {
    let (_, text) = server.api().get_text("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_slow_consumers_closed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_member_who_stops_reading_is_cut_off_alone_and_presence_goes_only_to_subscribers() {
    let env = [
        ("SWITCHBOARD_RATE_PER_SEC", "2000"),
        ("SWITCHBOARD_RATE_BURST", "2000"),
        ("SWITCHBOARD_WRITE_STALL_MS", "3000"),
    ];
    let server = Server::start_env(&env).await;
    let api = server.api();
    let (owner, fast, slow, late) = (
        api.register("gown").await,
        api.register("gfast").await,
        api.register("gslow").await,
        api.register("glate").await,
    );
    let g = create(&api, &owner, "flood", &[&fast, &slow, &late]).await;
    let _heavy = super::harness::HEAVY.lock().await;
    let (mut o, mut f) = (online(&server, &owner).await, online(&server, &fast).await);
    // The slow member: a tiny receive buffer, asks to sync (so live messages flow) and never
    // reads again.
    let mut slow_ws = super::hostile::non_reading_client(&server, &slow).await;
    slow_ws
        .send(tokio_tungstenite::tungstenite::Message::text(json!({"type":"sync","cursors":{}}).to_string()))
        .await
        .unwrap();
    // 300 messages of 30 KiB, paced over about 6 s (1.5 MB/s, which a reading member keeps up
    // with even on a busy machine): the slow member's output makes no progress for longer
    // than `write_stall_ms` (3 s) and is cut off.
    const FLOOD: usize = 300;
    let body = "x".repeat(30 * 1024);
    let started = std::time::Instant::now();
    let group = g.clone();
    let sending = tokio::spawn(async move {
        for i in 0..FLOOD {
            o.send(
                json!({"type":"send","conversation_id":group,"client_msg_id":format!("f{i}"),"body":body}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..FLOOD {
            o.expect("sent").await;
        }
        o
    });
    let mut last = 1; // the creation message
    while last < FLOOD as u64 + 1 {
        let m = f.expect("message").await;
        assert_eq!(m["seq"].as_u64(), Some(last + 1), "in order, no gap");
        last += 1;
    }
    let fast_done = started.elapsed();
    let mut o = sending.await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while slow_consumers_closed(&server).await < 1 {
        assert!(std::time::Instant::now() < deadline, "the member who stopped reading was never cut off");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "a member read {FLOOD} × 30 KiB in {fast_done:?} while another stopped reading (closed with 4008)"
    );

    drop(slow_ws);
    // Presence: the owner subscribes to the fast member (who has posted in the group) and to
    // nobody else; a member coming online is pushed to no one who did not subscribe.
    f.send_message(&g, "hi", "hi").await;
    o.send(json!({"type":"presence_subscribe","id":"p","user_ids":[fast.user_id]})).await;
    assert_eq!(o.expect("presence").await["user_id"], fast.user_id.as_str());
    let _late = online(&server, &late).await;
    f.expect_none("presence", Duration::from_millis(500)).await;
    o.expect_none("presence", Duration::from_millis(200)).await;
}

#[tokio::test]
async fn sessions_that_come_and_go_in_a_large_group_get_every_later_message() {
    // Nine members: the Registry indexes the group's sessions (audiences of 8 or more); a
    // session that connects or leaves after the index was built must be counted from then on.
    let server = Server::start().await;
    let api = server.api();
    let mut members = Vec::new();
    for i in 0..9 {
        members.push(api.register(&format!("idx{i}")).await);
    }
    let owner = &members[0];
    let g = create(&api, owner, "index", &members[1..].iter().collect::<Vec<_>>()).await;
    let mut sender = online(&server, owner).await;
    let mut early = online(&server, &members[1]).await;
    let leaver = online(&server, &members[2]).await;
    sender.send_message(&g, "m1", "one").await; // builds the index
    // A new session of a member, and a second device of one already online.
    let mut late = online(&server, &members[3]).await;
    let second_device = api.login(&members[1].username).await;
    let mut early2 = online(&server, &second_device).await;
    leaver.close().await;
    sender.send_message(&g, "m2", "two").await;
    for ws in [&mut early, &mut late, &mut early2] {
        loop {
            let m = ws.expect("message").await;
            if m["body"] == "two" {
                break;
            }
        }
    }
    sender.send_message(&g, "m3", "three").await;
    for ws in [&mut early, &mut late, &mut early2] {
        assert_eq!(ws.expect("message").await["body"], "three");
    }
}
