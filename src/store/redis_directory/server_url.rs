//! Parsing the directory's Redis URL (`redis://…` or `redis-sentinel://…`) into a fred
//! [`Config`].

use crate::store::{StoreError, StoreResult};
use fred::prelude::{Config, ServerConfig};

/// Parses `redis://…` (fred's syntax) or `redis-sentinel://[[user:]pass@]h:p[,h:p…]/service`
/// (fred's own `redis-sentinel://h:p/db?sentinelServiceName=…` form is accepted too).
pub(super) fn parse_url(url: &str) -> StoreResult<Config> {
    let bad = |why: &str| StoreError::Unavailable(format!("bad redis url {url:?}: {why}"));
    if let Some(rest) = url.strip_prefix("redis-sentinel://") {
        if rest.contains("sentinelServiceName=") {
            return Config::from_url_sentinel(url).map_err(|e| bad(&e.to_string()));
        }
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hosts, service) = rest.split_once('/').ok_or_else(|| bad("missing /service_name"))?;
        let service = service.trim_end_matches('/');
        if service.is_empty() || service.contains('/') || service.contains('?') {
            return Err(bad("expected /service_name after the sentinel hosts"));
        }
        let mut servers = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') => {
                    (host, port.parse::<u16>().map_err(|_| bad("bad port"))?)
                }
                _ => (h, 26379),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            servers.push((host.to_owned(), port));
        }
        if servers.is_empty() {
            return Err(bad("no sentinel host"));
        }
        let mut config =
            Config { server: ServerConfig::new_sentinel(servers, service.to_owned()), ..Config::default() };
        if let Some(auth) = auth {
            let (user, pass) = auth.split_once(':').unwrap_or(("", auth));
            config.username = (!user.is_empty()).then(|| user.to_owned());
            config.password = (!pass.is_empty()).then(|| pass.to_owned());
        }
        Ok(config)
    } else if url.starts_with("redis://") || url.starts_with("valkey://") {
        Config::from_url_centralized(url).map_err(|e| bad(&e.to_string()))
    } else {
        Err(bad("expected redis:// or redis-sentinel://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = parse_url("redis://127.0.0.1:6390/2").unwrap();
        assert!(matches!(c.server, ServerConfig::Centralized { .. }));
        assert_eq!(c.database, Some(2));
        let c = parse_url("redis-sentinel://127.0.0.1:1,localhost:2,h3/mysvc").unwrap();
        match c.server {
            ServerConfig::Sentinel { hosts, service_name, .. } => {
                assert_eq!(service_name, "mysvc");
                let hp: Vec<_> = hosts.iter().map(|s| (s.host.to_string(), s.port)).collect();
                assert_eq!(hp, vec![("127.0.0.1".into(), 1), ("localhost".into(), 2), ("h3".into(), 26379)]);
            }
            other => panic!("{other:?}"),
        }
        let c = parse_url("redis-sentinel://:secret@127.0.0.1:1/svc").unwrap();
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert!(parse_url("redis-sentinel://127.0.0.1:1").is_err());
        assert!(parse_url("redis-sentinel://127.0.0.1:x/svc").is_err());
        assert!(parse_url("http://x").is_err());
    }
}
