//! WebSocket policy: which browser pages may open a NATS connection.
//!
//! Browsers send the page's origin with every WebSocket handshake; a server that
//! accepts any origin lets any web page a user visits talk to the broker with that
//! user's network position. So the listener accepts an origin only if it is in the
//! allowlist, or, when the list is empty, if it is the listener's own origin
//! (same-origin). Clients that are not browsers send no Origin and are let through, as
//! by the reference: the origin check protects browsers' users, auth protects the rest.

/// `scheme://host:port`, normalised (lower case, default ports filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses an origin as browsers send it (`https://app.example.com`,
    /// `http://127.0.0.1:8080`).
    pub fn parse(text: &str) -> Result<Origin, String> {
        let bad = || format!("{text:?} is not an origin like \"https://app.example.com\"");
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return Err(bad()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        let (host, port) = split_host_port(rest).ok_or_else(bad)?;
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(default_port),
        })
    }

    /// Is this the origin of pages served from `host` (the handshake's Host header)
    /// over `tls`?
    fn is_same(&self, host: &str, tls: bool) -> bool {
        let Some((name, port)) = split_host_port(host) else {
            return false;
        };
        let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
        self.scheme == scheme
            && self.host == name.to_ascii_lowercase()
            && self.port == port.unwrap_or(default_port)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

/// Which origins may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<Origin>,
}

impl OriginPolicy {
    /// An empty list means same-origin only.
    pub fn new(allowed: &[String]) -> Result<OriginPolicy, String> {
        Ok(OriginPolicy {
            allowed: allowed
                .iter()
                .map(|o| Origin::parse(o))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Checks a handshake's `Origin` and `Host` headers; the error says why it was
    /// refused (for the log and the 403 body).
    pub fn check(&self, origin: Option<&str>, host: Option<&str>, tls: bool) -> Result<(), String> {
        let Some(origin_text) = origin else {
            return Ok(());
        };
        let origin = Origin::parse(origin_text)
            .map_err(|_| format!("origin {origin_text:?} is not valid"))?;
        let allowed = if self.allowed.is_empty() {
            host.is_some_and(|h| origin.is_same(h, tls))
        } else {
            self.allowed.contains(&origin)
        };
        if allowed {
            Ok(())
        } else {
            Err(format!("origin {origin_text:?} not allowed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_list_means_same_origin() {
        let p = OriginPolicy::new(&[]).unwrap();
        assert!(p
            .check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), false)
            .is_ok());
        assert!(p
            .check(Some("https://nats.example"), Some("nats.example"), true)
            .is_ok());
        assert!(p
            .check(Some("https://NATS.example:443"), Some("nats.example"), true)
            .is_ok());
        assert!(p
            .check(Some("http://evil.example"), Some("127.0.0.1:8080"), false)
            .is_err());
        assert!(p
            .check(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080"), false)
            .is_err());
        assert!(
            p.check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), true)
                .is_err(),
            "scheme"
        );
        assert!(p.check(Some("http://127.0.0.1:8080"), None, false).is_err());
        assert!(
            p.check(None, Some("127.0.0.1:8080"), false).is_ok(),
            "not a browser"
        );
        assert!(p
            .check(Some("null"), Some("127.0.0.1:8080"), false)
            .is_err());
    }

    #[test]
    fn allowlist_compares_scheme_host_and_port() {
        let p = OriginPolicy::new(&["https://app.example.com".into(), "http://[::1]:3000".into()])
            .unwrap();
        assert!(p
            .check(Some("https://app.example.com"), Some("x"), true)
            .is_ok());
        assert!(p
            .check(Some("https://app.example.com:443"), Some("x"), true)
            .is_ok());
        assert!(p
            .check(Some("http://app.example.com"), Some("x"), true)
            .is_err());
        assert!(p
            .check(Some("https://app.example.com:8443"), Some("x"), true)
            .is_err());
        assert!(p.check(Some("http://[::1]:3000"), Some("x"), false).is_ok());
        assert!(OriginPolicy::new(&["app.example.com".into()]).is_err());
        assert!(OriginPolicy::new(&["https://app.example.com/path".into()]).is_err());
    }
}
