//! Polling an endpoint's broker load source (capacity-aware spill-over).

use crate::health::load::{CapacitySpec, extract};

/// Polls one endpoint's load source.
pub struct LoadPoller {
    client: reqwest::Client,
    spec: CapacitySpec,
}

/// Largest load-source response read (an EMQX node's Prometheus page is a few hundred KiB).
const MAX_LOAD_BODY: usize = 8 << 20;

impl LoadPoller {
    /// Builds the HTTP client once (TLS verified with the public roots).
    pub fn new(spec: &CapacitySpec) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            // A load API that redirects is misconfigured; following it would also send the
            // API key's requests somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(spec.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            spec: spec.clone(),
        })
    }

    /// One poll: the current connection count.
    pub async fn poll(&self) -> Result<f64, String> {
        let mut req = self.client.get(&self.spec.url);
        if let Some(k) = &self.spec.api_key {
            req = req.basic_auth(k, self.spec.api_secret.as_deref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.spec.url))?;
        if !resp.status().is_success() {
            return Err(format!("{}: status {}", self.spec.url, resp.status()));
        }
        // Bounded: a misbehaving endpoint cannot make the poller buffer an endless body.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{}: {e}", self.spec.url))?
        {
            if body.len() + chunk.len() > MAX_LOAD_BODY {
                return Err(format!(
                    "{}: response larger than {} MiB",
                    self.spec.url,
                    MAX_LOAD_BODY >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body);
        extract(self.spec.source, &self.spec.field, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::load::LoadSource;
    use std::time::Duration;

    /// A one-shot HTTP server on loopback answering every connection with `head` and then
    /// `body_len` bytes of `0`s (streamed in 64 KiB writes); returns its URL.
    async fn serve(head: &'static str, body_len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v5/stats", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = c.read(&mut req).await;
                    let head = head.replace("{len}", &body_len.to_string());
                    if c.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'0'; 64 << 10];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if c.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
            }
        });
        url
    }

    fn spec(url: String) -> CapacitySpec {
        CapacitySpec {
            source: LoadSource::Json,
            url,
            field: "n".into(),
            api_key: Some("key".into()),
            api_secret: Some("secret".into()),
            capacity: 100.0,
            high_water: 0.8,
            hard_limit: 0.95,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }

    /// The error a poll of a server answering `head` and `body_len` bytes ends with.
    async fn poll_error(head: &'static str, body_len: usize) -> String {
        let url = serve(head, body_len).await;
        LoadPoller::new(&spec(url))
            .unwrap()
            .poll()
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_bodies_are_bounded() {
        let redirect =
            "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n";
        let err = poll_error(redirect, 0).await;
        assert!(err.ends_with("status 302 Found"), "{err}");
        let json =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n";
        let err = poll_error(json, MAX_LOAD_BODY + 1).await;
        assert!(err.ends_with("response larger than 8 MiB"), "{err}");
        // Just under the bound is read (and then fails as JSON, which proves it was read).
        let err = poll_error(json, MAX_LOAD_BODY).await;
        assert!(!err.contains("larger than"), "{err}");
    }
}
