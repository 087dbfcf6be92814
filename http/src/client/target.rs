//! Destination URLs: `http` or `https`, a host (a name or an IP literal), a port, and the path
//! and query the request line carries. Parsing is strict where leniency would make two parsers
//! disagree about which host is meant (credentials, numeric host forms, backslashes), because
//! the host decides where a delivery goes and whether the SSRF guard lets it: a URL means one
//! destination or it is refused when the endpoint is created.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::limits;

/// The scheme of a destination URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

impl Scheme {
    /// The scheme as written in a URL, lowercase.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port a URL without one means (RFC 9110 §4.2.1, §4.2.2).
    #[must_use]
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// A parsed destination URL, normalised: the scheme and a host name are lowercase, an IP
/// literal is in its canonical text form, the path and query start with `/` and carry no
/// fragment, and bytes a request target cannot hold are percent-encoded. Printing it
/// ([`fmt::Display`]) and parsing the text again gives the same `Target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// A host name (`api.example.com`, possibly ending in a dot) or an IP literal. An IPv6
    /// literal is kept without its brackets (`::1`), so that it parses as an [`IpAddr`];
    /// [`Target::authority`] puts them back.
    pub host: String,
    /// The port, explicit or the scheme's default; never 0.
    pub port: u16,
    /// The origin-form request target: the path, starting with `/`, and the query with its
    /// `?` if there is one.
    pub path_and_query: String,
}

/// Why a destination URL is refused. The message names the rule; it does not echo the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The URL is longer than [`limits::DESTINATION_URL_BYTES_MAX`].
    #[error("the URL is longer than {limit_bytes} bytes")]
    TooLong {
        /// The limit that was exceeded.
        limit_bytes: usize,
    },
    /// The URL does not start with `http://` or `https://`.
    #[error("the URL must start with http:// or https://")]
    UnsupportedScheme,
    /// A control character (or DEL) appears in the URL.
    #[error("the URL holds a control character")]
    ControlCharacter,
    /// The URL carries `user:password@` before the host.
    #[error("the URL must not carry credentials (user:password@host)")]
    Credentials,
    /// The host is missing or malformed.
    #[error("invalid host: {reason}")]
    InvalidHost {
        /// Which rule the host breaks.
        reason: &'static str,
    },
    /// The port is not a number from 1 to 65535.
    #[error("invalid port: the port must be a number from 1 to 65535")]
    InvalidPort,
}

impl Target {
    /// Parses an absolute `http` or `https` URL. Leading and trailing spaces are ignored; a
    /// fragment is dropped (it is never sent); spaces, non-ASCII bytes and the characters a
    /// request target must not hold raw are percent-encoded in the path and query.
    ///
    /// # Errors
    ///
    /// A [`TargetError`] naming the rule the URL breaks.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let url = url.trim_matches(' ');
        if url.len() > limits::DESTINATION_URL_BYTES_MAX {
            return Err(TargetError::TooLong { limit_bytes: limits::DESTINATION_URL_BYTES_MAX });
        }
        if url.bytes().any(|byte| byte.is_ascii_control()) {
            return Err(TargetError::ControlCharacter);
        }
        let (scheme, rest) = split_scheme(url)?;
        let authority_end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(authority_end);
        if rest.starts_with('\\') {
            // WHATWG parsers read `\` as `/` in http URLs, others as part of the host: refuse
            // the ambiguity rather than pick a side.
            return Err(TargetError::InvalidHost { reason: "a backslash cannot follow the host" });
        }
        let (host, port) = split_authority(authority)?;
        let host = parse_host(host)?;
        let port = match port {
            None | Some("") => scheme.default_port(),
            Some(port) => parse_port(port)?,
        };
        Ok(Self { scheme, host, port, path_and_query: normalise_path_and_query(rest) })
    }

    /// The `Host` header value: the host (IPv6 in brackets) and the port unless it is the
    /// scheme's default (RFC 9110 §7.2).
    #[must_use]
    pub fn authority(&self) -> String {
        let host = match self.ip_literal() {
            Some(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The host as an address when it is an IP literal, which skips DNS.
    #[must_use]
    pub fn ip_literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}://{}{}", self.scheme.as_str(), self.authority(), self.path_and_query)
    }
}

fn split_scheme(url: &str) -> Result<(Scheme, &str), TargetError> {
    let (scheme, rest) = url.split_once("://").ok_or(TargetError::UnsupportedScheme)?;
    // Schemes are case-insensitive (RFC 3986 §3.1).
    if scheme.eq_ignore_ascii_case("http") {
        Ok((Scheme::Http, rest))
    } else if scheme.eq_ignore_ascii_case("https") {
        Ok((Scheme::Https, rest))
    } else {
        Err(TargetError::UnsupportedScheme)
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the port is `None` without a colon.
fn split_authority(authority: &str) -> Result<(&str, Option<&str>), TargetError> {
    // Credentials would be sent nowhere (we have no way to), and `a@b` is how URLs are made to
    // look like they point at `a`.
    if authority.contains('@') {
        return Err(TargetError::Credentials);
    }
    if authority.is_empty() {
        return Err(TargetError::InvalidHost { reason: "the URL has no host" });
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) =
            bracketed.split_once(']').ok_or(TargetError::InvalidHost { reason: "an IPv6 literal must end with ]" })?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((authority.get(..host.len() + 2).unwrap_or(authority), Some(port))),
            None if after.is_empty() => Ok((authority, None)),
            None => Err(TargetError::InvalidPort),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// Validates and normalises a host: an IPv6 literal in brackets, a canonical dotted-quad IPv4
/// literal, or a name of letters, digits, `-` and `_` in dot-separated labels.
fn parse_host(host: &str) -> Result<String, TargetError> {
    if let Some(literal) = host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
        // Zone identifiers (`%eth0`) are refused by the parser: they only mean something for
        // link-local addresses, which the SSRF guard refuses anyway.
        let address: Ipv6Addr =
            literal.parse().map_err(|_| TargetError::InvalidHost { reason: "malformed IPv6 literal" })?;
        return Ok(address.to_string());
    }
    if host.is_empty() {
        return Err(TargetError::InvalidHost { reason: "the URL has no host" });
    }
    if let Ok(address) = host.parse::<Ipv4Addr>() {
        return Ok(address.to_string());
    }
    if !host.is_ascii() {
        return Err(TargetError::InvalidHost { reason: "write an international name in its xn-- (punycode) form" });
    }
    let host = host.to_ascii_lowercase();
    let name = host.strip_suffix('.').unwrap_or(&host);
    if name.len() > limits::HOST_NAME_BYTES_MAX {
        return Err(TargetError::InvalidHost { reason: "the name is longer than 253 characters" });
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > limits::HOST_LABEL_BYTES_MAX {
            return Err(TargetError::InvalidHost { reason: "every label of a name has 1 to 63 characters" });
        }
        if !label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
            return Err(TargetError::InvalidHost { reason: "a name holds only letters, digits, - and _" });
        }
    }
    if ends_in_a_number(name) {
        // `127.1`, `0x7f.1` and `2130706433` are IPv4 addresses to the system resolver and to
        // browsers, but not to a check that looks for dotted quads: refuse every such form.
        return Err(TargetError::InvalidHost { reason: "a numeric host must be a dotted-quad IPv4 address" });
    }
    Ok(host)
}

/// The WHATWG URL standard's "ends in a number": a last label of digits, or of `0x` and hex
/// digits, makes the whole host an IPv4 address in some legacy notation.
fn ends_in_a_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or_default();
    let hex = last.strip_prefix("0x").map(|digits| digits.bytes().all(|byte| byte.is_ascii_hexdigit()));
    hex.unwrap_or(false) || (!last.is_empty() && last.bytes().all(|byte| byte.is_ascii_digit()))
}

fn parse_port(port: &str) -> Result<u16, TargetError> {
    // `u16::from_str` would accept a leading `+`.
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::InvalidPort),
        Ok(port) => Ok(port),
    }
}

/// The origin-form request target for what follows the authority: the fragment dropped, `/`
/// when the path is empty, and every byte outside the visible ASCII range, plus the few that
/// RFC 3986 forbids raw (`"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`), percent-encoded.
/// Existing `%XX` escapes are kept as they are, which makes the normalisation idempotent.
fn normalise_path_and_query(rest: &str) -> String {
    let without_fragment = rest.split_once('#').map_or(rest, |(before, _)| before);
    let mut out = String::with_capacity(without_fragment.len() + 1);
    if !without_fragment.starts_with('/') {
        out.push('/');
    }
    for byte in without_fragment.bytes() {
        let raw_forbidden = matches!(byte, b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}');
        if byte.is_ascii_graphic() && !raw_forbidden {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(scheme: Scheme, host: &str, port: u16, path_and_query: &str) -> Target {
        Target { scheme, host: host.to_owned(), port, path_and_query: path_and_query.to_owned() }
    }

    #[test]
    fn common_urls_parse_to_their_parts() {
        // These are the shapes endpoint URLs take in practice; each part decides where a
        // delivery goes.
        let cases = [
            ("https://api.example.com/hooks?x=1", target(Scheme::Https, "api.example.com", 443, "/hooks?x=1")),
            ("http://example.com", target(Scheme::Http, "example.com", 80, "/")),
            ("HTTP://Example.COM:8080", target(Scheme::Http, "example.com", 8080, "/")),
            ("http://example.com:/a", target(Scheme::Http, "example.com", 80, "/a")),
            ("http://example.com?q", target(Scheme::Http, "example.com", 80, "/?q")),
            ("http://10.0.0.1:9000/x#frag", target(Scheme::Http, "10.0.0.1", 9000, "/x")),
            ("https://[::1]/x", target(Scheme::Https, "::1", 443, "/x")),
            ("https://[2606:4700:0::1111]:8443/", target(Scheme::Https, "2606:4700::1111", 8443, "/")),
            ("  http://example.com./a b  ", target(Scheme::Http, "example.com.", 80, "/a%20b")),
            ("http://h/caf\u{e9}?k=\"v\"", target(Scheme::Http, "h", 80, "/caf%C3%A9?k=%22v%22")),
            ("http://my_host-1.internal/%2F", target(Scheme::Http, "my_host-1.internal", 80, "/%2F")),
        ];
        for (url, expected) in cases {
            assert_eq!(Target::parse(url), Ok(expected), "{url}");
        }
    }

    #[test]
    fn ambiguous_or_malformed_urls_are_refused() {
        // Each of these either names no destination or names one differently to different
        // parsers, which is how an SSRF check is bypassed.
        let cases = [
            ("ftp://example.com/", TargetError::UnsupportedScheme),
            ("example.com/path", TargetError::UnsupportedScheme),
            ("http://user:secret@example.com/", TargetError::Credentials),
            ("http://example.com@127.0.0.1/", TargetError::Credentials),
            ("http://example.com\r\nX: y/", TargetError::ControlCharacter),
            ("http://example.com/\ta", TargetError::ControlCharacter),
            ("http:///path", TargetError::InvalidHost { reason: "the URL has no host" }),
            ("http://:80/", TargetError::InvalidHost { reason: "the URL has no host" }),
            ("http://127.1/", TargetError::InvalidHost { reason: "a numeric host must be a dotted-quad IPv4 address" }),
            (
                "http://2130706433/",
                TargetError::InvalidHost { reason: "a numeric host must be a dotted-quad IPv4 address" },
            ),
            (
                "http://0x7f.0.0.1/",
                TargetError::InvalidHost { reason: "a numeric host must be a dotted-quad IPv4 address" },
            ),
            (
                "http://0177.0.0.1/",
                TargetError::InvalidHost { reason: "a numeric host must be a dotted-quad IPv4 address" },
            ),
            ("http://a..b/", TargetError::InvalidHost { reason: "every label of a name has 1 to 63 characters" }),
            ("http://exa mple.com/", TargetError::InvalidHost { reason: "a name holds only letters, digits, - and _" }),
            ("http://example.com\\@evil/", TargetError::InvalidHost { reason: "a backslash cannot follow the host" }),
            ("http://[::1/", TargetError::InvalidHost { reason: "an IPv6 literal must end with ]" }),
            ("http://[fe80::1%25eth0]/", TargetError::InvalidHost { reason: "malformed IPv6 literal" }),
            ("http://[::1]x/", TargetError::InvalidPort),
            ("http://example.com:0/", TargetError::InvalidPort),
            ("http://example.com:65536/", TargetError::InvalidPort),
            ("http://example.com:+80/", TargetError::InvalidPort),
            ("http://example.com:80:80/", TargetError::InvalidPort),
            (
                "http://b\u{fc}cher.example/",
                TargetError::InvalidHost { reason: "write an international name in its xn-- (punycode) form" },
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(Target::parse(url), Err(expected), "{url:?}");
        }
        let long = format!("http://example.com/{}", "a".repeat(limits::DESTINATION_URL_BYTES_MAX));
        assert_eq!(Target::parse(&long), Err(TargetError::TooLong { limit_bytes: limits::DESTINATION_URL_BYTES_MAX }));
        let long_label = format!("http://{}.com/", "a".repeat(64));
        assert!(matches!(Target::parse(&long_label), Err(TargetError::InvalidHost { .. })));
    }

    #[test]
    fn authority_omits_the_default_port_and_brackets_ipv6() {
        // The Host header must be what the destination's virtual hosting expects.
        assert_eq!(Target::parse("https://example.com:443/").unwrap().authority(), "example.com");
        assert_eq!(Target::parse("http://example.com:443/").unwrap().authority(), "example.com:443");
        assert_eq!(Target::parse("http://[::1]:8080/").unwrap().authority(), "[::1]:8080");
        assert_eq!(Target::parse("https://[::1]/").unwrap().authority(), "[::1]");
        assert_eq!(Target::parse("http://[::1]/").unwrap().ip_literal(), Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        assert_eq!(Target::parse("http://localhost/").unwrap().ip_literal(), None);
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_-]{1,20}(\\.[a-z0-9_-]{1,20}){0,3}\\.[a-z]{2,6}\\.?",
            any::<Ipv4Addr>().prop_map(|address| address.to_string()),
            any::<Ipv6Addr>().prop_map(|address| address.to_string()),
        ]
    }

    prop_compose! {
        fn target_strategy()(
            https in any::<bool>(),
            host in host_strategy(),
            port in 1_u16..,
            path in "(/[a-zA-Z0-9._~!$&'()*+,;=:@%-]{0,12}){1,4}",
            query in proptest::option::of("[a-zA-Z0-9=&/?%-]{0,20}"),
        ) -> Target {
            let scheme = if https { Scheme::Https } else { Scheme::Http };
            let path_and_query = match query { Some(query) => format!("{path}?{query}"), None => path };
            Target { scheme, host, port, path_and_query }
        }
    }

    proptest! {
        #[test]
        fn printed_targets_parse_back_to_themselves(target in target_strategy()) {
            // The engine stores an endpoint's URL as text and parses it again after a restart:
            // the destination must not change on the way.
            prop_assert_eq!(Target::parse(&target.to_string()), Ok(target));
        }

        #[test]
        fn parsing_never_panics_and_normalises_once(input in "\\PC{0,80}", prefix in prop_oneof![
            Just(""), Just("http://"), Just("https://"), Just("http://["), Just("http://a:"),
        ]) {
            // Endpoint URLs come from API clients; whatever they send, parsing answers with a
            // value, and an accepted URL is already in its normal form.
            let url = format!("{prefix}{input}");
            if let Ok(target) = Target::parse(&url) {
                prop_assert!(target.path_and_query.starts_with('/'));
                prop_assert!(target.port != 0);
                prop_assert!(!target.path_and_query.bytes().any(|byte| byte <= b' ' || byte >= 0x7f));
                prop_assert_eq!(Target::parse(&target.to_string()), Ok(target));
            }
        }
    }
}
