//! `hookline listen`: a local receiver for developers. It verifies both
//! signatures of every webhook it gets and prints what arrived, readably.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use clap::Args;

use crate::domain::SigningSecret;
use crate::signing;

/// Standard Webhooks' suggested tolerance for `webhook-timestamp`.
pub const TOLERANCE_S: i64 = signing::TOLERANCE_S;

#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// The project's signing secret (`whsec_…`), to verify signatures.
    #[arg(long, env = "HOOKLINE_LISTEN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Status code to answer with (try 500 to watch retries).
    #[arg(long, default_value_t = 200)]
    pub status: u16,
}

/// The verdict on one received webhook, per scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub x_signature: Result<(), String>,
    pub standard: Result<(), String>,
}

/// Checks both signature schemes of a request (see [`signing::check_request`]).
pub fn verify(secret: &SigningSecret, headers: &HeaderMap, body: &[u8], now_s: i64) -> Verdict {
    let check = signing::check_request(secret, |name| headers.get(name).and_then(|v| v.to_str().ok()), body, now_s);
    let explain = |c: signing::Check, absent: &str| match c {
        signing::Check::Verified { .. } => Ok(()),
        signing::Check::Absent => Err(absent.to_owned()),
        signing::Check::Failed(e) => Err(e.to_string()),
    };
    Verdict {
        x_signature: explain(check.x_signature, "no X-Signature header"),
        standard: explain(check.standard, "missing webhook-id, webhook-timestamp and webhook-signature"),
    }
}

fn mark(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "verified".to_owned(),
        Err(why) => format!("NOT VERIFIED ({why})"),
    }
}

/// What `hookline listen` prints for one received webhook, and the verdict on
/// its signatures when a secret was given.
pub fn describe(
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    secret: Option<&SigningSecret>,
) -> (String, Option<Verdict>) {
    use std::fmt::Write as _;
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let mut out = format!(
        "── {} {}  event={}  webhook-id={}\n",
        path,
        get("content-type"),
        get("x-event-name"),
        get("webhook-id")
    );
    let verdict = secret.map(|secret| {
        let now = crate::domain::time::now_ms() / 1000;
        let v = verify(secret, headers, body, now);
        let _ = writeln!(out, "   X-Signature: {}", mark(&v.x_signature));
        let _ = writeln!(out, "   webhook-signature: {}", mark(&v.standard));
        v
    });
    if verdict.is_none() {
        out.push_str("   (signatures not checked: pass --secret whsec_…)\n");
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => out.push_str(&serde_json::to_string_pretty(&json).unwrap_or_default()),
        Err(_) => out.push_str(&String::from_utf8_lossy(body)),
    }
    (out, verdict)
}

/// A receiver on `listener` that answers every request with `status` and
/// hands each one, described, to `on_webhook`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    secret: Option<SigningSecret>,
    status: StatusCode,
    on_webhook: impl Fn(String, Option<Verdict>) + Clone + Send + Sync + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let secret = secret.clone();
        let on_webhook = on_webhook.clone();
        async move {
            let (text, verdict) = describe(uri.path(), &headers, &body, secret.as_ref());
            on_webhook(text, verdict);
            status
        }
    });
    axum::serve(listener, app).await
}

pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let secret = match &args.secret {
        Some(s) => {
            Some(SigningSecret::parse(s).ok_or_else(|| anyhow::anyhow!("--secret must look like whsec_<base64>"))?)
        }
        None => None,
    };
    let status = StatusCode::from_u16(args.status)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{addr}/ (Ctrl-C to stop)");
    serve(listener, secret, status, |text, _| println!("{text}")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correctly_signed_request_verifies_and_a_tampered_one_does_not() {
        let secret = SigningSecret::generate();
        let body = br#"{"id":"evt_1"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-signature", signing::x_signature(secret.expose(), body).parse().unwrap());
        headers.insert("webhook-id", "dlv_1".parse().unwrap());
        headers.insert("webhook-timestamp", "1000".parse().unwrap());
        let sig = signing::webhook_signature_header(std::slice::from_ref(&secret), "dlv_1", 1000, body);
        headers.insert("webhook-signature", sig.parse().unwrap());
        assert_eq!(verify(&secret, &headers, body, 1010), Verdict { x_signature: Ok(()), standard: Ok(()) });
        let tampered = verify(&secret, &headers, br#"{"id":"evt_2"}"#, 1010);
        assert!(tampered.x_signature.is_err() && tampered.standard.is_err());
        assert!(verify(&secret, &headers, body, 5000).standard.unwrap_err().contains("away from now"));
    }
}
