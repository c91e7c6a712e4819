//! `hookline demo`: the whole flow in one command, on a throwaway database.
//!
//! It starts a real server (in this process, on a free port, SQLite in a
//! temporary directory) and a local receiver (the one `hookline listen` runs),
//! then drives the public HTTP API exactly as an application would: creates a
//! project, a webhook per event, sends an `order.created` and an `order.paid`,
//! prints each delivery as it arrives with its signatures checked, prints the
//! delivery log, sends one webhook a test delivery (`webhook.test`), and
//! removes everything it made.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::domain::SigningSecret;
use crate::{Application, Settings, listen};

/// The events the demo sends, with their data.
fn events() -> [(&'static str, Value); 2] {
    [
        (
            "order.created",
            json!({"order_id": "ord_1001", "customer_id": "cus_42", "currency": "EUR", "total_amount": 4990,
                   "items": [{"sku": "TSHIRT-M", "quantity": 2, "unit_price": 2495}]}),
        ),
        ("order.paid", json!({"order_id": "ord_1001", "payment_id": "pay_7", "currency": "EUR", "amount": 4990})),
    ]
}

/// How long the demo waits for deliveries before it gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// A minimal JSON client for the demo's calls to its own server.
struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let response = self.client.request(request.body(body)?).await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A call that must answer `expected`; anything else stops the demo.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, token, body).await?;
        ensure!(status == expected, "{method} {path} answered {status}, not {expected}: {value}");
        Ok(value)
    }
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("?").to_owned()
}

pub async fn run() -> anyhow::Result<()> {
    // Removed when dropped, whatever happened.
    let dir = tempfile::Builder::new().prefix("hookline-demo-").tempdir().context("creating a temporary directory")?;
    let admin_token = format!("demo-{:032x}", rand::random::<u128>());
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    // --dev lets webhooks point at the local receiver (http, loopback).
    let settings = Settings::from_flags([
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &database,
        "--dev",
        "--admin-token",
        &admin_token,
        "--retry-schedule",
        "200ms,1s",
    ])?;
    let app = Application::build(settings).await?;
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{}", app.local_addr()),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let outcome = drive(&api, &admin_token, &database).await;
    let _ = stop.send(());
    server.await.context("the server panicked")??;
    outcome
}

async fn drive(api: &Api, admin_token: &str, database: &str) -> anyhow::Result<()> {
    println!("hookline demo: a throwaway server, receiver and database; nothing is kept.\n");
    println!("  server    {}   ({database})", api.base);

    println!("\n1. Create a project                      POST /v1/admin/projects");
    let provisioned = api
        .expect(
            Method::POST,
            "/v1/admin/projects",
            admin_token,
            Some(json!({"name": "demo shop"})),
            StatusCode::CREATED,
        )
        .await?;
    let key = text(&provisioned, "api_key");
    let secret = SigningSecret::parse(&text(&provisioned, "signing_secret")).context("the signing secret")?;
    println!("   project {}  (its API key and signing secret are shown once)", text(&provisioned["project"], "id"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}", listener.local_addr()?);
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    tokio::spawn(listen::serve(listener, Some(secret), StatusCode::OK, move |text, verdict| {
        let _ = arrived.send((text, verdict));
    }));
    println!("   receiver {receiver}  (hookline listen: verifies both signatures)");

    println!("\n2. Add a webhook per event               POST /v1/webhooks");
    let mut hooks = Vec::new();
    for (event, _) in events() {
        let target = format!("{receiver}/webhooks/{event}");
        let hook = api
            .expect(
                Method::POST,
                "/v1/webhooks",
                &key,
                Some(json!({"event": event, "target_url": target})),
                StatusCode::CREATED,
            )
            .await?;
        println!("   {}  {event:<14} → {target}", text(&hook, "id"));
        hooks.push(text(&hook, "id"));
    }

    println!("\n3. Send the events                       POST /v1/events");
    let mut expected = 0;
    for (event, data) in events() {
        let receipt = api
            .expect(
                Method::POST,
                "/v1/events",
                &key,
                Some(json!({"event_name": event, "data": data})),
                StatusCode::ACCEPTED,
            )
            .await?;
        let deliveries = receipt["deliveries"].as_array().map_or(0, Vec::len);
        expected += deliveries;
        println!("   202  {}  {event:<14} {deliveries} delivery, committed before the answer", text(&receipt, "id"));
    }

    println!("\n4. Deliveries arrive at the receiver, signed");
    let mut verified = 0;
    for _ in 0..expected {
        verified += arrival(&mut arrivals).await?;
    }

    println!("\n5. The delivery log                      GET /v1/webhook-logs");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let logs = loop {
        let page = api.expect(Method::GET, "/v1/webhook-logs", &key, None, StatusCode::OK).await?;
        let logs = page["data"].as_array().cloned().unwrap_or_default();
        if logs.len() == expected && logs.iter().all(|l| l["status"] == "sent") {
            break logs;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the deliveries were not all logged as sent in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for log in logs.iter().rev() {
        print_log(log);
    }

    let tested = &hooks[0];
    println!("\n6. Send a test delivery                  POST /v1/webhooks/{{id}}/test");
    let answer =
        api.expect(Method::POST, &format!("/v1/webhooks/{tested}/test"), &key, None, StatusCode::ACCEPTED).await?;
    let delivery = text(&answer, "delivery_id");
    println!("   202  {delivery}  webhook.test → {tested} only (whatever its event, even when disabled)");
    verified += arrival(&mut arrivals).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let log = loop {
        let log = api.expect(Method::GET, &format!("/v1/webhook-logs/{delivery}"), &key, None, StatusCode::OK).await?;
        if log["status"] == "sent" {
            break log;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the test delivery was not logged as sent in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    print_log(&log);
    println!(
        "\nDone: {} events and a test sent, {verified} deliveries received and verified, all logged as sent.",
        events().len()
    );
    Ok(())
}

/// Waits for the receiver's next delivery, prints it, and counts it if both
/// signatures verified; a delivery that does not verify stops the demo.
async fn arrival(arrivals: &mut mpsc::UnboundedReceiver<(String, Option<listen::Verdict>)>) -> anyhow::Result<usize> {
    let (text, verdict) = tokio::time::timeout(PATIENCE, arrivals.recv())
        .await
        .context("no delivery arrived in time")?
        .context("the receiver stopped")?;
    println!("{text}");
    match verdict {
        Some(v) if v.x_signature.is_ok() && v.standard.is_ok() => Ok(1),
        _ => bail!("a delivery's signature did not verify"),
    }
}

fn print_log(log: &Value) {
    println!(
        "   {}  {:<14} {}  HTTP {}  attempts {}  → {}",
        text(log, "id"),
        text(log, "event"),
        text(log, "status"),
        log["response_code"],
        log["attempts"],
        text(log, "target_url"),
    );
}
