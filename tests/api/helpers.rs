//! The harness: a real hookline server on a random port with its own fresh
//! database, and a real HTTP receiver that records what it gets and answers
//! as scripted.

// Not every helper is used by every test module at every stage.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// Upper bound on waiting for something that should happen; reaching it fails
/// the test. Tests never sleep for a fixed time and then look.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `check` every 20 ms until it returns `Some`, and returns that;
/// fails the test, saying `what` it waited for, after [`PATIENCE`]. The one
/// waiting loop of the tests: nothing sleeps for a fixed time and then looks.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(PATIENCE, what, check).await
}

/// [`eventually`] with another bound, for waits that take longer by design.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Admin token of every test server.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Where the PostgreSQL variant of each test connects to create its database;
/// unset, those variants are skipped.
pub const POSTGRES_URL_VAR: &str = "HOOKLINE_TEST_POSTGRES_URL";

/// Which store a test runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// A server URL with rights to create databases; each test gets its own.
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend, when `HOOKLINE_TEST_POSTGRES_URL` is set.
    pub fn postgres() -> Option<Self> {
        std::env::var(POSTGRES_URL_VAR).ok().filter(|u| !u.is_empty()).map(Self::Postgres)
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// Says that a PostgreSQL test did not run, and why.
pub fn skipped_without_postgres() {
    eprintln!(
        "skipped: set {POSTGRES_URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it on PostgreSQL"
    );
}

/// A fresh, empty database for one test, removed when dropped: a file in a
/// temporary directory for SQLite, a database of its own for PostgreSQL.
pub struct TestDatabase {
    pub url: String,
    /// `--secret-key` for every server on this database: required with
    /// PostgreSQL (nodes share it); SQLite keeps its key beside the file.
    pub secret_key: Option<String>,
    pub dir: tempfile::TempDir,
    /// PostgreSQL: the server URL and the database to drop afterwards.
    drop_on: Option<(String, String)>,
}

impl TestDatabase {
    pub async fn create(backend: &Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.path().join("hookline.db").display()),
                secret_key: None,
                dir,
                drop_on: None,
            },
            Backend::Postgres(server) => {
                use sqlx::Connection as _;
                let name = format!("hookline_test_{}", uuid::Uuid::now_v7().simple());
                let mut admin = sqlx::PgConnection::connect(server).await.expect("PostgreSQL answers");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                    .execute(&mut admin)
                    .await
                    .expect("a test database can be created");
                admin.close().await.ok();
                let mut url = url::Url::parse(server).expect("a valid PostgreSQL URL");
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    secret_key: Some(hookline::vault::Vault::generate_key()),
                    dir,
                    drop_on: Some((server.clone(), name)),
                }
            }
        }
    }

    /// `--database-url` and, when there is one, `--secret-key`: what every
    /// process on this database is started with.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--database-url".to_owned(), self.url.clone()];
        if let Some(key) = &self.secret_key {
            flags.extend(["--secret-key".to_owned(), key.clone()]);
        }
        flags
    }

    /// Opens and migrates a store on this database, as a server would.
    pub async fn store(&self) -> hookline::store::Store {
        use hookline::store::Backend as _;
        let url = hookline::config::DatabaseUrl::parse(&self.url).unwrap();
        let store = hookline::store::Store::open(&url, 10).await.expect("the database opens");
        store.migrate().await.expect("migrations apply");
        store
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.drop_on.take() else { return };
        // Drop runs inside the test's runtime, which cannot be blocked on from
        // within; a thread with a runtime of its own does the async work.
        // FORCE ends the connections servers of this test may still hold.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a test database: {dropped:?}");
        }
    }
}

/// Flags every test server gets: retries are milliseconds apart and the worker
/// polls often.
const TEST_FLAGS: &[&str] = &[
    "--listen",
    "127.0.0.1:0",
    "--retry-schedule",
    "20ms,40ms",
    "--max-attempts",
    "3",
    "--poll-interval",
    "100ms",
    "--admin-token",
    ADMIN_TOKEN,
];

/// Added by [`TestApp::spawn_with`]: a receiver on loopback is allowed on purpose.
const ALLOW_LOOPBACK: &[&str] = &["--allow-target-cidr", "127.0.0.1/32"];

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub project: Project,
    pub database_url: String,
    server: Server,
    /// Dropped after the server, with the app.
    pub db: Arc<TestDatabase>,
}

/// One running server, in this process.
pub struct Server {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// A server with the test flags plus `extra` (a flag given in `extra` replaces its test default) on `db`.
    pub async fn start(db: &TestDatabase, extra: &[&str]) -> Self {
        // A flag in `extra` replaces the default (clap takes each flag once),
        // the database's own flags included (e.g. a wrong --secret-key).
        let defaults: Vec<String> = TEST_FLAGS.iter().map(|s| s.to_string()).chain(db.flags()).collect();
        let mut flags: Vec<String> =
            defaults.chunks(2).filter(|pair| !extra.contains(&pair[0].as_str())).flatten().cloned().collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let settings = hookline::Settings::from_flags(flags).expect("valid test flags");
        let app = hookline::Application::build(settings).await.expect("the app builds");
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self { base, stop: Some(stop), done: Some(done) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server the way SIGTERM does, and waits until it has.
    pub async fn stop(mut self) {
        self.stop_here().await;
    }

    /// Stops the server and waits, leaving a value that only drops.
    async fn stop_here(&mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.done.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A project as the admin API returned it.
#[derive(Debug, Clone)]
pub struct Project {
    pub id: String,
    pub api_key: String,
    pub signing_secret: String,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

impl TestApp {
    /// A server with the test flags.
    pub async fn spawn(backend: &Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// A server with the test flags plus `extra` (a flag given in `extra`
    /// replaces its test default; repeatable flags add up).
    pub async fn spawn_with(backend: &Backend, extra: &[&str]) -> Self {
        let flags: Vec<&str> = ALLOW_LOOPBACK.iter().chain(extra).copied().collect();
        Self::spawn_strict(backend, &flags).await
    }

    /// A server with the test flags but no target range allowed, plus `extra`:
    /// the address policy as an operator gets it out of the box.
    pub async fn spawn_strict(backend: &Backend, extra: &[&str]) -> Self {
        let db = Arc::new(TestDatabase::create(backend).await);
        let server = Server::start(&db, extra).await;
        let http = http_client();
        let project = create_project(&http, &server.base, "test project").await;
        Self { base: server.base.clone(), http, project, database_url: db.url.clone(), server, db }
    }

    /// Another server on the same database (another node), with the test
    /// flags plus `extra`, such as `--role worker`.
    pub async fn spawn_peer(&self, extra: &[&str]) -> Server {
        let flags: Vec<&str> = ALLOW_LOOPBACK.iter().chain(extra).copied().collect();
        Server::start(&self.db, &flags).await
    }

    /// `--database-url` (and `--secret-key` where needed) of this app's database,
    /// for running `hookline` commands on it.
    pub fn database_flags(&self) -> Vec<String> {
        self.db.flags()
    }

    /// Stops this server and starts another on the same database (and key
    /// file) with the test flags plus `extra`, and no target range allowed
    /// unless `extra` allows one. The project and its credentials carry over.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.server.stop_here().await;
        self.server = Server::start(&self.db, extra).await;
        self.base = self.server.base.clone();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Another project on the same server.
    pub async fn other_project(&self) -> Project {
        create_project(&self.http, &self.base, "other project").await
    }

    /// A request authenticated as the app's project.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.project.api_key)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(&self.project.api_key).json(body)
    }

    /// GETs a path as the app's project, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// Adds a webhook and returns its id.
    pub async fn add_webhook(&self, event: &str, target_url: &str) -> String {
        let r = self.post("/v1/webhooks", &json!({"event": event, "target_url": target_url})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// Sends an event and returns the 202 body.
    pub async fn send_event(&self, event: &str, data: Value) -> Value {
        let r = self.post("/v1/events", &json!({"event_name": event, "data": data})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// A delivery's log entry, with its attempts.
    pub async fn log(&self, delivery_id: &str) -> Value {
        let r = self.get(&format!("/v1/webhook-logs/{delivery_id}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Waits until the delivery is in `status` (and no longer leased), and returns its log entry.
    pub async fn wait_for_status(&self, delivery_id: &str, status: &str) -> Value {
        eventually(&format!("delivery {delivery_id} to become {status}"), || async {
            let log = self.log(delivery_id).await;
            (log["status"] == status).then_some(log)
        })
        .await
    }

    /// Stops the server the way SIGTERM does, and waits until it has.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

pub async fn create_project(http: &reqwest::Client, base: &str, name: &str) -> Project {
    let r = http
        .post(format!("{base}/v1/admin/projects"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    Project {
        id: v["project"]["id"].as_str().unwrap().to_owned(),
        api_key: v["api_key"].as_str().unwrap().to_owned(),
        signing_secret: v["signing_secret"].as_str().unwrap().to_owned(),
    }
}

/// What the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The sender's address: one per connection, to see connection reuse.
    pub peer: SocketAddr,
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, headers: vec![], body: String::new(), delay: Duration::ZERO }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

struct ReceiverState {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    count: watch::Sender<usize>,
    /// Requests being answered right now, and the most seen at once.
    active: std::sync::atomic::AtomicUsize,
    max_active: std::sync::atomic::AtomicUsize,
}

/// A local HTTP server standing in for a customer's webhook endpoint.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Answers 200 to everything unless scripted.
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState {
            got: Mutex::default(),
            script: Mutex::default(),
            default: Mutex::new(Reply::status(200).body("ok")),
            count: watch::channel(0).0,
            active: Default::default(),
            max_active: Default::default(),
        });
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: Bytes| {
                let state = handler_state.clone();
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now_active = state.active.fetch_add(1, SeqCst) + 1;
                    state.max_active.fetch_max(now_active, SeqCst);
                    // Counts down even if the sender gives up while we sleep.
                    struct Leave(Arc<ReceiverState>);
                    impl Drop for Leave {
                        fn drop(&mut self) {
                            self.0.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _leave = Leave(state.clone());
                    let reply = {
                        let mut got = state.got.lock().unwrap();
                        let at = std::time::Instant::now();
                        got.push(Received { path: uri.path().to_owned(), headers, body, peer, at });
                        state.count.send_replace(got.len());
                        state
                            .script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or_else(|| state.default.lock().unwrap().clone())
                    };
                    tokio::time::sleep(reply.delay).await;
                    let mut response = axum::response::Response::new(axum::body::Body::from(reply.body));
                    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                    for (name, value) in reply.headers {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await },
        );
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next requests get these answers, in order; then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Every request not scripted gets this answer.
    pub fn always(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// The most requests this receiver was answering at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_active.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.state.count.subscribe();
        let arrived = tokio::time::timeout(PATIENCE, count.wait_for(|c| *c >= n)).await;
        assert!(arrived.is_ok(), "expected {n} requests, got {}", self.received().len());
        self.received()
    }
}

/// One TCP connection that speaks HTTP/1.1 by hand, to send what well-behaved
/// clients never do: half a head, a body that trickles in, nothing at all.
pub struct RawConnection {
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// Read and not yet taken as an answer.
    buffer: Vec<u8>,
}

/// An answer read by a [`RawConnection`].
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header: {self:?}")).to_str().unwrap()
    }

    /// The body as a problem document with the answer's status.
    pub fn problem(&self) -> Value {
        assert_eq!(self.header("content-type"), "application/problem+json");
        let problem: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(problem["status"], self.status);
        assert!(problem["type"].is_string() && problem["title"].is_string() && problem["detail"].is_string());
        problem
    }
}

impl RawConnection {
    /// Connects to a server's `base` URL (`http://host:port`).
    pub async fn open(base: &str) -> Self {
        let address = base.strip_prefix("http://").expect("an http:// base URL");
        let (reader, writer) = tokio::net::TcpStream::connect(address).await.unwrap().into_split();
        Self { reader, writer, buffer: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next answer, waited for up to [`PATIENCE`].
    pub async fn answer(&mut self) -> RawAnswer {
        self.answer_while_sending(&[], Duration::from_secs(3600)).await
    }

    /// The next answer, while `rest` is sent a byte every `every` (a body
    /// that trickles in); waited for up to [`PATIENCE`].
    pub async fn answer_while_sending(&mut self, rest: &[u8], every: Duration) -> RawAnswer {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut rest = rest;
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            if let Some(answer) = self.take_answer() {
                return answer;
            }
            tokio::select! {
                read = self.reader.read_buf(&mut self.buffer) => match read {
                    Ok(0) => panic!("closed before a whole answer: {:?}", String::from_utf8_lossy(&self.buffer)),
                    Ok(_) => {}
                    Err(e) => panic!("reading the answer failed: {e}"),
                },
                _ = tick.tick(), if !rest.is_empty() => {
                    // The server may have answered and closed already; the answer tells.
                    let _ = self.writer.write_all(&rest[..1]).await;
                    rest = &rest[1..];
                }
                () = tokio::time::sleep_until(deadline) => panic!("no answer within {PATIENCE:?}"),
            }
        }
    }

    /// A whole answer at the start of the buffer, taken out of it.
    fn take_answer(&mut self) -> Option<RawAnswer> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = parsed.parse(&self.buffer).expect("an HTTP/1.1 answer") else {
            return None;
        };
        let mut map = HeaderMap::new();
        for h in parsed.headers.iter() {
            map.append(
                axum::http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let status = parsed.code.unwrap();
        let length: usize = map.get("content-length").map_or(0, |v| v.to_str().unwrap().parse().unwrap());
        if self.buffer.len() < head + length {
            return None;
        }
        let body = Bytes::copy_from_slice(&self.buffer[head..head + length]);
        self.buffer.drain(..head + length);
        Some(RawAnswer { status, headers: map, body })
    }

    /// Waits (up to [`PATIENCE`]) until the server closes the connection, and
    /// returns what it sent before that was not taken as an answer.
    pub async fn closed(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buffer)).await {
                Ok(Ok(0) | Err(_)) => return std::mem::take(&mut self.buffer),
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server kept the connection open for {PATIENCE:?}"),
            }
        }
    }
}

/// HMAC-SHA256, computed here independently of hookline's signing module.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Asserts both signatures of a received webhook against `secret`.
pub fn assert_signed(got: &Received, secret: &str) {
    use base64::Engine as _;
    let github = format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &got.body)));
    assert_eq!(got.header("x-signature"), github);
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let signed = format!("{}.{}.", got.header("webhook-id"), got.header("webhook-timestamp"));
    let mut message = signed.into_bytes();
    message.extend_from_slice(&got.body);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &message)));
    let header = got.header("webhook-signature");
    assert!(header.split(' ').any(|s| s == expected), "{header} lacks {expected}");
}

/// Asserts that a response is a problem document with this status, and returns it.
pub async fn assert_problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// The `field`s of a validation problem.
pub fn problem_fields(problem: &Value) -> Vec<String> {
    problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
}

/// Runs each test function once per backend, as `sqlite::name` and
/// `postgres::name`; the latter is skipped, saying so, when
/// `HOOKLINE_TEST_POSTGRES_URL` is not set.
#[macro_export]
macro_rules! backend_tests {
    ($( $(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block )*) => {
        $( $(#[$meta])* async fn $name($backend: $crate::helpers::Backend) $body )*

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match $crate::helpers::Backend::postgres() {
                        Some(backend) => super::$name(backend).await,
                        None => $crate::helpers::skipped_without_postgres(),
                    }
                }
            )*
        }
    };
}
