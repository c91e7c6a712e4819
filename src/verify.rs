//! `hookline verify`: checks the signatures of a captured webhook request
//! offline and says, in plain words, what matched and what did not.
//!
//! It is the tool for "my receiver says the signature is wrong": give it the
//! project's secret, the request's headers and the raw body as received, and it
//! runs the same checks a receiver should run (both schemes, and the 5 minute
//! timestamp tolerance of Standard Webhooks), with [`crate::signing`].
//! The exit code is 0 only when the request is authentic.

use std::fmt;
use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::domain::SigningSecret;
use crate::domain::time::now_ms;
use crate::signing::{self, Check, RequestCheck, TOLERANCE_S, VerifyError};

#[derive(Clone, Args)]
pub struct VerifyArgs {
    /// The project's signing secret (`whsec_…`).
    #[arg(long, env = "HOOKLINE_VERIFY_SECRET", hide_env_values = true)]
    pub secret: String,

    /// A header of the request, as `name: value`; repeat it for X-Signature,
    /// webhook-id, webhook-timestamp and webhook-signature.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// A file holding the body exactly as received (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub body_file: PathBuf,

    /// Judge the timestamp as of this instant (unix seconds) instead of now,
    /// to check a request captured earlier.
    #[arg(long, value_name = "UNIX_S")]
    pub now: Option<i64>,
}

// The secret stays out of any debug output.
impl fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyArgs")
            .field("secret", &"***")
            .field("headers", &self.headers)
            .field("body_file", &self.body_file)
            .field("now", &self.now)
            .finish()
    }
}

/// `name: value` → (lower-case name, trimmed value).
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or("a header is written as 'name: value'")?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a header name is one word, such as webhook-signature".to_owned());
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    // The parse error never repeats the value: it may be a real secret mistyped.
    let secret = SigningSecret::parse(args.secret.trim())
        .context("--secret must be the project's signing secret: whsec_ followed by base64")?;
    let body = if args.body_file.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).context("reading the body from standard input")?;
        body
    } else {
        std::fs::read(&args.body_file).with_context(|| format!("reading {}", args.body_file.display()))?
    };
    let now = args.now.unwrap_or_else(|| now_ms() / 1000);
    let header = |name: &str| args.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let check = signing::check_request(&secret, header, &body, now);
    let timestamp = header("webhook-timestamp").and_then(|t| t.trim().parse().ok());
    let (text, authentic) = report(&check, timestamp, now);
    print!("{text}");
    anyhow::ensure!(authentic, "the request is not verified");
    Ok(())
}

/// "3m 12s old" or "40s in the future".
fn age(now: i64, timestamp: i64) -> String {
    let span = humantime::format_duration(Duration::from_secs((now - timestamp).unsigned_abs()));
    if now >= timestamp { format!("{span} old") } else { format!("{span} in the future") }
}

/// The explanation `hookline verify` prints, and whether the request is authentic.
pub fn report(check: &RequestCheck, timestamp: Option<i64>, now: i64) -> (String, bool) {
    let tolerance = format!("{} minute", TOLERANCE_S / 60);
    let x_signature = match &check.x_signature {
        Check::Absent => "not present.".to_owned(),
        Check::Verified { .. } => "verified: the HMAC-SHA256 of the body, keyed with this secret, matches.".to_owned(),
        Check::Failed(VerifyError::Missing) => {
            "NOT VERIFIED: the value must look like sha256=<64 lowercase hex digits>.".to_owned()
        }
        Check::Failed(_) => "NOT VERIFIED: it does not match this body and secret. Either the body file is not \
                             byte for byte what was received (use the raw bytes, before any JSON parsing, and \
                             beware of a newline added at the end), or this is not the secret that signed it \
                             (after a rotation, X-Signature uses the newest secret)."
            .to_owned(),
    };
    let standard = match &check.standard {
        Check::Absent => "not present (no webhook-id, webhook-timestamp or webhook-signature header).".to_owned(),
        Check::Verified { index, of } => {
            let when = timestamp.map(|ts| age(now, ts)).unwrap_or_default();
            let mut s = format!(
                "verified: signature {} of {of} matches this secret, and webhook-timestamp is {when}, \
                 within the {tolerance} tolerance.",
                index + 1
            );
            if *of > 1 {
                s.push_str(" The request was sent during a secret rotation, signed once with each valid secret.");
            }
            if *index > 0 {
                s.push_str(
                    " This secret is not the newest: it stops signing when the rotation overlap ends; \
                     switch your receiver to the new secret.",
                );
            }
            s
        }
        Check::Failed(VerifyError::MissingHeader(name)) => format!(
            "NOT VERIFIED: the {name} header is missing. Standard Webhooks signs webhook-id, \
             webhook-timestamp and the body together, so all three headers are needed."
        ),
        Check::Failed(VerifyError::BadTimestamp) => {
            "NOT VERIFIED: webhook-timestamp must be unix seconds, such as 1700000000.".to_owned()
        }
        Check::Failed(VerifyError::Missing) => "NOT VERIFIED: webhook-signature has no v1,<base64> entry.".to_owned(),
        Check::Failed(VerifyError::Stale(_)) => format!(
            "NOT VERIFIED: the signature matches this secret, but webhook-timestamp is {}, outside the \
             {tolerance} tolerance, so a receiver must refuse it as a possible replay. To check a request \
             captured earlier, pass --now {}.",
            timestamp.map(|ts| age(now, ts)).unwrap_or_default(),
            timestamp.unwrap_or_default()
        ),
        Check::Failed(_) => "NOT VERIFIED: no v1 signature matches. The body, webhook-id or \
                             webhook-timestamp differ from what was signed, or this is not the secret \
                             that signed it."
            .to_owned(),
    };
    let authentic = check.is_authentic();
    let verdict = if authentic {
        "VERIFIED: this request was signed with this secret."
    } else if check.x_signature == Check::Absent && check.standard == Check::Absent {
        "NOT VERIFIED: no signature header was given; pass the request's headers with --header 'name: value'."
    } else {
        "NOT VERIFIED: do not trust this request."
    };
    let text = format!("X-Signature: {x_signature}\nwebhook-signature: {standard}\n\n{verdict}\n");
    (text, authentic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_written_as_name_colon_value() {
        assert_eq!(parse_header("Webhook-Id: dlv_1").unwrap(), ("webhook-id".into(), "dlv_1".into()));
        assert_eq!(
            parse_header("webhook-signature:v1,a= v1,b=").unwrap(),
            ("webhook-signature".into(), "v1,a= v1,b=".into())
        );
        assert!(parse_header("webhook-id dlv_1").is_err());
        assert!(parse_header(": x").is_err());
    }

    fn verified() -> Check {
        Check::Verified { index: 0, of: 1 }
    }

    #[test]
    fn a_verified_request_says_so_and_tells_the_age_of_its_timestamp() {
        let check = RequestCheck { x_signature: verified(), standard: verified() };
        let (text, ok) = report(&check, Some(1000), 1012);
        assert!(ok);
        assert!(text.contains("X-Signature: verified"), "{text}");
        assert!(text.contains("webhook-timestamp is 12s old, within the 5 minute tolerance"), "{text}");
        assert!(text.ends_with("VERIFIED: this request was signed with this secret.\n"), "{text}");
    }

    #[test]
    fn a_rotation_overlap_and_an_old_secret_are_explained() {
        let check = RequestCheck { x_signature: Check::Absent, standard: Check::Verified { index: 1, of: 2 } };
        let (text, ok) = report(&check, Some(1000), 1000);
        assert!(ok);
        assert!(text.contains("signature 2 of 2"), "{text}");
        assert!(text.contains("during a secret rotation"), "{text}");
        assert!(text.contains("not the newest"), "{text}");
    }

    #[test]
    fn failures_say_what_to_look_at() {
        let cases = [
            (Check::Failed(VerifyError::Mismatch), verified(), "byte for byte"),
            (verified(), Check::Failed(VerifyError::Stale(-400)), "6m 40s in the future"),
            (verified(), Check::Failed(VerifyError::Stale(-400)), "pass --now 1400"),
            (verified(), Check::Failed(VerifyError::MissingHeader("webhook-id")), "webhook-id header is missing"),
            (Check::Absent, Check::Failed(VerifyError::Mismatch), "no v1 signature matches"),
            (Check::Absent, Check::Absent, "no signature header was given"),
        ];
        for (x_signature, standard, says) in cases {
            let check = RequestCheck { x_signature, standard };
            let (text, ok) = report(&check, Some(1400), 1000);
            assert!(!ok, "{text}");
            assert!(text.contains(says), "{text:?} should say {says:?}");
            assert!(text.contains("NOT VERIFIED"), "{text}");
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let args = VerifyArgs { secret: "whsec_c2VjcmV0".into(), headers: vec![], body_file: "-".into(), now: None };
        assert!(!format!("{args:?}").contains("c2VjcmV0"));
    }
}
