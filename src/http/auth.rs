//! Bearer tokens: where they come from (config, a token file, or one generated on first
//! start into a 0600 file), and checking a request's `Authorization: Bearer …` or
//! `X-API-Key` header against them in constant time.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq as _;

use super::HttpError;
use crate::config::TokenSource;
use crate::config::server::GENERATED_TOKEN_FILE;

/// The accepted tokens; a match yields the token's index (its rate-limit key).
#[derive(Clone)]
pub struct Tokens(Vec<Vec<u8>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} redacted)", self.0.len())
    }
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_tokens(key: &str, path: &Path) -> Result<Tokens, HttpError> {
    let text = std::fs::read_to_string(path).map_err(|source| HttpError::TokenFile {
        key: key.into(),
        path: path.to_owned(),
        source,
    })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "token file is readable by other users; chmod 600 it");
    }
    let tokens: Vec<Vec<u8>> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect();
    if tokens.is_empty() {
        return Err(HttpError::NoToken { path: path.to_owned() });
    }
    Ok(Tokens(tokens))
}

/// Creates `path` (mode 0600, failing if it exists) holding a new random token.
fn generate(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let token = random_hex(32)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

impl Tokens {
    /// Loads the configured tokens, generating the token file on first start.
    /// Returns the tokens and the file they came from (none for an inline token).
    ///
    /// # Errors
    /// The token file cannot be read or created, or holds no token.
    pub fn load(source: &TokenSource, state_dir: &Path) -> Result<(Self, Option<PathBuf>), HttpError> {
        match source {
            TokenSource::Inline(t) => Ok((Tokens(vec![t.as_bytes().to_vec()]), None)),
            TokenSource::File(p) => Ok((read_tokens("server.token_file", p)?, Some(p.clone()))),
            TokenSource::Generated => {
                let path = state_dir.join(GENERATED_TOKEN_FILE);
                match generate(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "generated an HTTP bearer token"),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(HttpError::TokenFile { key: "server.token_file".into(), path, source });
                    }
                }
                Ok((read_tokens("server.token_file", &path)?, Some(path)))
            }
        }
    }

    /// The index of the token the request carries, if any matches. Every configured
    /// token is compared, each in constant time, so timing tells nothing about which.
    #[must_use]
    pub fn check(&self, headers: &HeaderMap) -> Option<usize> {
        let presented = presented(headers)?;
        let mut found = None;
        for (i, t) in self.0.iter().enumerate() {
            if bool::from(t.as_slice().ct_eq(presented)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

/// The token a request presents: `Authorization: Bearer <t>`, else `X-API-Key: <t>`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = b"bearer ";
        if v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(v[scheme.len()..].trim_ascii());
        }
        return None;
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        h
    }

    fn tokens() -> Tokens {
        Tokens(vec![b"first-token-0123456789".to_vec(), b"second-token-0123456789".to_vec()])
    }

    #[test]
    fn bearer_token_matches_its_index() {
        assert_eq!(tokens().check(&headers("authorization", "Bearer second-token-0123456789")), Some(1));
    }

    #[test]
    fn x_api_key_is_accepted() {
        assert_eq!(tokens().check(&headers("x-api-key", "first-token-0123456789")), Some(0));
    }

    #[test]
    fn wrong_token_is_refused() {
        assert_eq!(tokens().check(&headers("authorization", "Bearer first-token-012345678X")), None);
    }

    #[test]
    fn basic_scheme_is_refused() {
        assert_eq!(tokens().check(&headers("authorization", "Basic first-token-0123456789")), None);
    }

    #[test]
    fn generated_token_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = Tokens::load(&TokenSource::Generated, dir.path()).unwrap();
        let mode = std::fs::metadata(path.unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn generated_token_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Tokens::load(&TokenSource::Generated, dir.path()).unwrap();
        let (second, _) = Tokens::load(&TokenSource::Generated, dir.path()).unwrap();
        assert_eq!(first.0, second.0);
    }
}
