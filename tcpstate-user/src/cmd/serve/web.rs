//! `--web-config`: the Prometheus exporter-toolkit file format (`tls_server_config`
//! with `cert_file`/`key_file`, `basic_auth_users` with bcrypt hashes), its TLS
//! acceptor (rustls, ring provider), and basic auth with a cache of successful checks
//! (bcrypt costs tens of ms per check, as exporter-toolkit notes).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    pub tls: Option<TlsFiles>,
    /// user -> bcrypt hash.
    pub users: HashMap<String, String>,
}

/// Keys this implementation knows; any other is refused (a security setting silently
/// ignored would be worse than an error).
const TLS_KEYS: &[&str] = &["cert_file", "key_file"];

fn str_of<'a>(v: &'a Yaml, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what}: expected a string"))
}

/// Parses the file's text; relative paths are relative to `dir` (the file's
/// directory), as exporter-toolkit resolves them.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let mut cfg = WebConfig::default();
    let Some(doc) = docs.into_iter().next() else {
        return Ok(cfg);
    };
    let top = match doc {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(cfg),
        _ => return Err("expected a mapping at the top level".into()),
    };
    for (k, v) in &top {
        let key = str_of(k, "top-level key")?;
        match key {
            "tls_server_config" => {
                let Yaml::Hash(t) = v else {
                    return Err("tls_server_config: expected a mapping".into());
                };
                let mut cert = None;
                let mut key_file = None;
                for (tk, tv) in t {
                    let tk = str_of(tk, "tls_server_config key")?;
                    let val = || str_of(tv, &format!("tls_server_config.{tk}"));
                    match tk {
                        "cert_file" => cert = Some(dir.join(val()?)),
                        "key_file" => key_file = Some(dir.join(val()?)),
                        other => {
                            return Err(format!(
                                "tls_server_config.{other} is not supported (supported: {})",
                                TLS_KEYS.join(", ")
                            ))
                        }
                    }
                }
                match (cert, key_file) {
                    (Some(cert_file), Some(key_file)) => {
                        cfg.tls = Some(TlsFiles {
                            cert_file,
                            key_file,
                        })
                    }
                    (None, _) => return Err("tls_server_config: cert_file is missing".into()),
                    (_, None) => return Err("tls_server_config: key_file is missing".into()),
                }
            }
            "basic_auth_users" => {
                let users = match v {
                    Yaml::Hash(u) => u,
                    Yaml::Null => continue,
                    _ => return Err("basic_auth_users: expected a mapping".into()),
                };
                for (u, h) in users {
                    let user = str_of(u, "basic_auth_users key")?;
                    let hash = str_of(h, &format!("basic_auth_users.{user}"))?;
                    if bcrypt::HashParts::from_str(hash).is_err() {
                        return Err(format!(
                            "basic_auth_users.{user}: not a bcrypt hash (e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                        ));
                    }
                    cfg.users.insert(user.to_string(), hash.to_string());
                }
            }
            other => {
                return Err(format!(
                    "{other} is not supported (supported: tls_server_config, basic_auth_users)"
                ))
            }
        }
    }
    Ok(cfg)
}

/// Reads and parses the file; errors name it.
pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("web config {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir).map_err(|e| anyhow::anyhow!("web config {}: {e}", path.display()))
}

/// A TLS acceptor for the certificate chain and key (HTTP/1.1 only).
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let cert_err = |e: rustls_pki_types::pem::Error| {
        anyhow::anyhow!("TLS certificate {}: {e}", files.cert_file.display())
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(cert_err)?
        .collect::<Result<_, _>>()
        .map_err(cert_err)?;
    if certs.is_empty() {
        anyhow::bail!(
            "TLS certificate {}: no certificate in it",
            files.cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| anyhow::anyhow!("TLS key {}: {e}", files.key_file.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        anyhow::anyhow!(
            "TLS certificate {} and key {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Most cached successes; past it the cache starts over (bcrypt ignores bytes past
/// the 72nd, so one user has unboundedly many passwords that check).
const CACHE_MAX: usize = 1024;

/// A hash checked for unknown users, so that they take as long as known ones
/// (exporter-toolkit does the same). Its password is never compared as valid.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| bcrypt::hash("tcpstate", bcrypt::DEFAULT_COST).unwrap_or_default())
}

/// Basic auth against `basic_auth_users`.
#[derive(Debug, Default)]
pub struct Auth {
    users: HashMap<String, String>,
    /// (user, password) pairs that checked: later requests skip bcrypt.
    ok: Mutex<HashSet<(String, String)>>,
}

impl Auth {
    pub fn new(users: HashMap<String, String>) -> Self {
        Self {
            users,
            ok: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether an `Authorization` header value grants access.
    pub async fn check(self: &Arc<Self>, header: Option<&str>) -> bool {
        if !self.enabled() {
            return true;
        }
        let Some((user, pass)) = header.and_then(decode_basic) else {
            return false;
        };
        let key = (user, pass);
        if self.ok.lock().is_ok_and(|c| c.contains(&key)) {
            return true;
        }
        let hash = self.users.get(&key.0).cloned();
        let pass = key.1.clone();
        // bcrypt takes tens of ms: off the runtime's thread.
        let verified = tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let h = hash.unwrap_or_else(|| dummy_hash().to_string());
            bcrypt::verify(pass, &h).unwrap_or(false) && known
        })
        .await
        .unwrap_or(false);
        if verified {
            if let Ok(mut c) = self.ok.lock() {
                if c.len() >= CACHE_MAX {
                    c.clear();
                }
                c.insert(key);
            }
        }
        verified
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.ok.lock().unwrap().len()
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn decode_basic(h: &str) -> Option<(String, String)> {
    let (scheme, b64) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_toolkit_format() {
        let hash = bcrypt::hash("x", 4).unwrap();
        let text = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /etc/k.key\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        );
        let c = parse(&text, Path::new("/etc/tcpstate")).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert_file: "/etc/tcpstate/server.crt".into(),
                key_file: "/etc/k.key".into(),
            })
        );
        assert_eq!(
            c.users.get("prometheus").map(String::as_str),
            Some(hash.as_str())
        );
        // Empty files and empty sections are no TLS and no auth.
        assert_eq!(parse("", Path::new(".")).unwrap(), WebConfig::default());
        assert_eq!(
            parse("basic_auth_users:\n", Path::new(".")).unwrap(),
            WebConfig::default()
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, want) in [
            ("tls_server_config: [1]", "tls_server_config: expected a mapping"),
            ("tls_server_config:\n  cert_file: a\n", "key_file is missing"),
            ("tls_server_config:\n  key_file: a\n", "cert_file is missing"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_auth_type is not supported",
            ),
            ("basic_auth_users:\n  bob: plaintext\n", "basic_auth_users.bob: not a bcrypt hash"),
            ("basic_auth_users: x", "expected a mapping"),
            ("http_server_config:\n  http2: false\n", "http_server_config is not supported"),
            ("- a\n- b\n", "top level"),
            ("tls_server_config: {cert_file: [", "invalid YAML"),
        ] {
            let e = parse(text, Path::new(".")).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = load(Path::new("/nonexistent/web.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("web config /nonexistent/web.yml: "), "{e}");
    }

    #[test]
    fn basic_header_decoding() {
        // "alice:s3:cret" (a colon in the password)
        assert_eq!(
            decode_basic("Basic YWxpY2U6czM6Y3JldA=="),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert_eq!(decode_basic("Bearer YWxpY2U6eA=="), None);
        assert_eq!(decode_basic("Basic !!!"), None);
        assert_eq!(decode_basic("Basic YWxpY2U="), None, "no colon");
    }

    #[test]
    fn auth_checks_and_caches_successes_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        let auth = Arc::new(Auth::new([("prom".to_string(), hash)].into()));
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        rt.block_on(async {
            assert!(!auth.check(None).await);
            assert!(!auth.check(Some(&basic("prom", "wrong"))).await);
            assert!(!auth.check(Some(&basic("eve", "secret"))).await);
            assert_eq!(auth.cached(), 0);
            assert!(auth.check(Some(&basic("prom", "secret"))).await);
            assert_eq!(auth.cached(), 1);
            assert!(auth.check(Some(&basic("prom", "secret"))).await);
            assert_eq!(auth.cached(), 1);
            assert!(
                Arc::new(Auth::default()).check(None).await,
                "no users: open"
            );
        });
    }
}
