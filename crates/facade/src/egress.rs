//! Where credentials may be sent: a host filled in from a connection's parameters
//! (`https://{subdomain}.myshopify.com`) is typed by an end user, so it must name a
//! public service, never this machine, its private network or a cloud metadata
//! service, unless the integration says otherwise (`allow_private_hosts: true`).
//!
//! Hosts the admin wrote into an integration (`base_url: http://127.0.0.1:8080`) are
//! trusted as they are; only the parts filled from parameters are checked. These are
//! pure rules: the connect path checks the filled URLs' hosts as written, and the
//! proxy checks them again, with the addresses they resolve to, before each request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use keyhaven_core::{Error, Integration};
use serde_json::{Map, Value};
use url::{Host, Url};

/// The integration config flag that lets connection parameters name private hosts
/// (for an integration meant to reach services on a private network, and tests).
pub const ALLOW_PRIVATE_HOSTS: &str = "allow_private_hosts";

/// Whether `integration` lets connection parameters name private or local hosts.
pub fn allows_private_hosts(integration: &Integration) -> bool {
    integration
        .config
        .get(ALLOW_PRIVATE_HOSTS)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The authority (`user@host:port`) of a URL template, as written.
fn authority(template: &str) -> &str {
    let rest = template
        .split_once("://")
        .map_or(template, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// The `{names}` that fill the host (or port) of a URL template: empty when the
/// host is the admin's own, written out in full.
pub fn host_param_names(template: &str) -> Vec<String> {
    keyhaven_catalog::template_names(authority(template))
}

/// What is wrong with an IP address as a destination for credentials given by an end
/// user: `None` for a public unicast address.
pub fn private_address_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified (0.0.0.0/8) address")
    } else if ip.is_link_local() {
        Some("a link-local address (169.254.0.0/16, where cloud metadata services answer)")
    } else if ip.is_private() {
        Some("a private (RFC 1918) address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (CGNAT, 100.64.0.0/10) address")
    } else if a == 192 && b == 0 && c == 0 {
        Some("an IETF protocol (192.0.0.0/24) address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a benchmarking (198.18.0.0/15) address")
    } else if ip.is_multicast() || a >= 240 {
        Some("a multicast, reserved or broadcast address")
    } else {
        None
    }
}

fn private_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // Addresses that carry an IPv4 address: judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_unique_local() {
        Some("a unique local (fc00::/7) address")
    } else if ip.is_unicast_link_local() || segments[0] & 0xffc0 == 0xfec0 {
        Some("a link-local or site-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if segments[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated, ::a.b.c.d).
        private_v4(embedded(segments[6], segments[7]))
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 (64:ff9b::a.b.c.d).
        private_v4(embedded(segments[6], segments[7]))
    } else if segments[0] == 0x2002 {
        // 6to4 (2002:aabb:ccdd::).
        private_v4(embedded(segments[1], segments[2]))
    } else {
        None
    }
}

/// What is wrong with `host` as a destination for credentials given by an end user,
/// as written (names are not resolved here): `None` when it may be a public host.
pub fn private_host_kind(host: &Host<&str>) -> Option<&'static str> {
    match host {
        Host::Ipv4(ip) => private_v4(*ip),
        Host::Ipv6(ip) => private_v6(*ip),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Some("a loopback name")
            } else if [".local", ".internal", ".localdomain", ".home.arpa"]
                .iter()
                .any(|suffix| name.ends_with(suffix))
            {
                Some("a local network name")
            } else if !name.contains('.') {
                Some("a name without a domain (a local name)")
            } else {
                None
            }
        }
    }
}

/// What is wrong with `url`'s host as a destination for credentials given by an end
/// user, as written: `None` when it may be a public host (names are not resolved).
pub fn private_url_kind(url: &Url) -> Option<&'static str> {
    match url.host() {
        Some(host) => private_host_kind(&host),
        None => Some("no host at all"),
    }
}

/// The error for a connection parameter that points a URL at a private host.
pub fn private_host_error(
    place: &str,
    template: &str,
    field: &str,
    host: &str,
    kind: &str,
) -> Error {
    let param = host_param_names(template)
        .into_iter()
        .next()
        .unwrap_or_else(|| "host".to_owned());
    Error::invalid(
        format!("{place}.{param}"),
        format!(
            "makes {field} point to {host}, {kind}; credentials are only sent to public hosts. Give the service's public name (such as acme for acme.example.com); an integration meant for a private network sets {ALLOW_PRIVATE_HOSTS}: true in its auth_config"
        ),
    )
}

/// The config fields whose URLs receive the integration's own secrets (an OAuth
/// client secret) with each token request and revocation, whoever's account it is.
const SECRET_DESTINATIONS: &[&str] = &["token_url", "revocation_url"];

/// The integration config field that lists the values a connection parameter may
/// take (`{"dc_domain": ["com", "eu", ...]}`), from the catalogue or the admin.
pub const CONNECTION_PARAM_VALUES: &str = keyhaven_catalog::CONNECTION_PARAM_VALUES;

/// The values `param` may take, when the integration lists them.
pub(crate) fn allowed_values<'a>(integration: &'a Integration, param: &str) -> Option<&'a [Value]> {
    integration
        .config
        .get(CONNECTION_PARAM_VALUES)?
        .get(param)?
        .as_array()
        .map(Vec::as_slice)
}

/// The parameters of a URL template that choose its host's domain: those of a host
/// that does not end in a fixed domain of two labels or more after its last
/// parameter (`{instance}`, `accounts.zoho.{dc_domain}`), as opposed to a name under
/// the provider's own domain (`{shop}.myshopify.com`, `api.{shard}.adobesign.com`).
fn domain_params(template: &str) -> Vec<String> {
    let authority = authority(template);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host.rsplit_once(':') {
        Some((host, port)) if !port.contains('}') => host,
        _ => host,
    };
    let Some(last) = host.rfind('}') else {
        return Vec::new();
    };
    let fixed = host[last + 1..]
        .split('.')
        .filter(|label| !label.is_empty())
        .count();
    if host[last + 1..].starts_with('.') && fixed >= 2 {
        return Vec::new();
    }
    keyhaven_catalog::template_names(host)
}

/// Refuses a connection whose parameters would choose the domain that receives the
/// integration's own secrets: an end user naming their own server as the token
/// endpoint of an integration with a client secret would be sent that secret (and,
/// on revocation, tokens). Such a parameter must be one of the values the
/// integration lists ([`CONNECTION_PARAM_VALUES`]); else the admin writes the URL
/// out in the integration (one integration per instance, as its OAuth client is).
///
/// # Errors
/// [`Error::InvalidInput`] naming the parameter and what to do.
pub(crate) fn check_secret_destinations(
    integration: &Integration,
    values: &Map<String, Value>,
) -> Result<(), Error> {
    if integration.secrets.expose().is_empty() {
        return Ok(());
    }
    for field in SECRET_DESTINATIONS {
        let Some(template) = integration.config.get(*field).and_then(Value::as_str) else {
            continue;
        };
        for param in domain_params(template) {
            if values.contains_key(&param) && allowed_values(integration, &param).is_none() {
                return Err(Error::invalid(
                    format!("connected_account_params.{param}"),
                    format!(
                        "chooses the host of auth_config.{field}, which receives this integration's client secret, so an end user may not give it; the admin sets {field} (and the app's other URLs) to the instance's own in the integration's auth_config, one integration per instance, or lists the values {param} may take in auth_config.{CONNECTION_PARAM_VALUES}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The URLs of `integration`'s config whose host is filled from `values` (the
/// connection's parameters), as (`auth_config.<field>`, template, URL): none when the
/// integration allows private hosts. A URL whose templates are not all filled yet is
/// left out (it is checked once they are), as is one that does not parse.
pub(crate) fn param_host_urls<'a>(
    integration: &'a Integration,
    values: &'a Map<String, Value>,
) -> impl Iterator<Item = (String, &'a str, Url)> + 'a {
    let allowed = allows_private_hosts(integration);
    integration
        .config
        .iter()
        .filter(move |_| !allowed)
        .filter_map(move |(field, value)| {
            let template = value.as_str()?;
            if field == keyhaven_catalog::CONNECTION_PARAMS
                || !template.contains("://")
                || host_param_names(template).is_empty()
            {
                return None;
            }
            let filled = keyhaven_catalog::fill_template(template, values);
            if !host_param_names(&filled).is_empty() {
                // Not all given yet (a connect form will ask for the rest).
                return None;
            }
            let url = Url::parse(&filled).ok()?;
            Some((format!("auth_config.{field}"), template, url))
        })
}

/// Checks every URL of `integration`'s config whose host is filled from `values`
/// ([`param_host_urls`]): none may name a private or local host, as written.
///
/// # Errors
/// [`Error::InvalidInput`] naming the parameter.
pub(crate) fn check_param_hosts(
    integration: &Integration,
    values: &Map<String, Value>,
) -> Result<(), Error> {
    checked_param_host_urls(integration, values).map(drop)
}

/// [`param_host_urls`], each checked as [`check_param_hosts`] does.
///
/// # Errors
/// [`Error::InvalidInput`] naming the parameter of the first private host.
pub(crate) fn checked_param_host_urls<'a>(
    integration: &'a Integration,
    values: &'a Map<String, Value>,
) -> Result<Vec<(String, &'a str, Url)>, Error> {
    param_host_urls(integration, values)
        .map(|(field, template, url)| match private_url_kind(&url) {
            Some(kind) => Err(private_host_error(
                "connected_account_params",
                template,
                &field,
                url.host_str().unwrap_or_default(),
                kind,
            )),
            None => Ok((field, template, url)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(url: &str) -> Option<&'static str> {
        private_url_kind(&Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")))
    }

    #[test]
    fn private_and_local_hosts_are_told_apart_from_public_ones() {
        for private in [
            "http://127.0.0.1/",
            "http://127.1.2.3/",
            "http://0.0.0.0/",
            "http://0/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.169.254/",
            "http://100.64.0.1/",
            "http://100.127.255.255/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fc00::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://printer.local/",
            "http://metadata.google.internal/",
            "http://intranet/",
        ] {
            assert!(kind(private).is_some(), "{private} must be private");
        }
        for public in [
            "https://acme.myshopify.com/",
            "https://169.254.169.254.example.com/",
            "http://8.8.8.8/",
            "http://100.128.0.1/",
            "http://172.32.0.1/",
            "http://[2606:4700::1111]/",
        ] {
            assert_eq!(kind(public), None, "{public} is public");
        }
    }

    #[test]
    fn only_hosts_filled_from_parameters_are_the_users() {
        assert_eq!(
            host_param_names("https://{subdomain}.myshopify.com/admin/{version}"),
            ["subdomain"]
        );
        assert_eq!(
            host_param_names("http://{host}:{port}/api"),
            ["host", "port"]
        );
        assert!(host_param_names("https://dev.azure.com/{organization}").is_empty());
        assert!(host_param_names("http://127.0.0.1:9/api?x={x}").is_empty());
        assert_eq!(host_param_names("{base}"), ["base"]);
    }
}
