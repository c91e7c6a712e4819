//! The OpenAPI document and the page that renders it.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::*;

const REGENERATE: &str = "cargo run -q -- openapi > openapi.json";

fn generated() -> Value {
    hookline::api::openapi(&hookline::domain::Catalog::builtin())
}

#[test]
fn the_committed_openapi_json_is_what_the_code_generates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let expected = hookline::api::openapi_json_text(&hookline::domain::Catalog::builtin());
    assert!(
        committed.trim_end() == expected,
        "openapi.json is out of date with the code; regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_openapi_document_covers_every_route_of_the_spec() {
    let doc = generated();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("post", "/v1/events"),
        ("get", "/v1/events"),
        ("get", "/v1/events/{id}"),
        ("post", "/v1/webhooks"),
        ("get", "/v1/webhooks"),
        ("get", "/v1/webhooks/{id}"),
        ("patch", "/v1/webhooks/{id}"),
        ("delete", "/v1/webhooks/{id}"),
        ("get", "/v1/webhook-logs"),
        ("get", "/v1/webhook-logs/{id}"),
        ("post", "/v1/webhook-logs/{id}/retry"),
        ("post", "/v1/webhook-logs/replay"),
        ("post", "/v1/webhooks/{id}/test"),
        ("post", "/v1/signing-secret/rotate"),
        ("post", "/v1/admin/projects"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ];
    for (method, path) in routes {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let responses = op["responses"].as_object().unwrap();
        if path.starts_with("/v1/") {
            // Every API route says how it fails, as problem documents.
            assert!(responses.contains_key("401"), "{method} {path} documents no 401");
            let security = op["security"].to_string();
            let expected = if path.starts_with("/v1/admin") { "admin_token" } else { "api_key" };
            assert!(security.contains(expected), "{method} {path}: security {security}");
        }
        if path.contains("{id}") {
            assert!(responses.contains_key("404"), "{method} {path} documents no 404");
        }
        // Any route may be answered by the server itself (SPEC §10).
        assert!(responses.contains_key("408"), "{method} {path} documents no 408");
        assert!(responses.contains_key("503"), "{method} {path} documents no 503");
    }
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len(), "a route is documented that the spec does not list");

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    let unauthorized = &doc["components"]["responses"]["Unauthorized"];
    assert_eq!(unauthorized["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem");

    let ingest = &doc["paths"]["/v1/events"]["post"];
    let statuses: BTreeSet<&str> = ingest["responses"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(statuses, BTreeSet::from(["202", "400", "401", "408", "413", "415", "422", "503"]));
    let overloaded = &doc["components"]["responses"]["Overloaded"];
    assert!(overloaded["headers"]["Retry-After"].is_object(), "{overloaded}");
    assert_eq!(ingest["parameters"][0]["name"], "Idempotency-Key");
    assert_eq!(ingest["parameters"][0]["in"], "header");
    assert!(ingest["responses"]["202"]["headers"]["Idempotent-Replayed"].is_object());
    let filters: BTreeSet<&str> = doc["paths"]["/v1/webhook-logs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        BTreeSet::from(["status", "event", "webhook_id", "event_id", "since", "until", "limit", "cursor"])
    );
}

fn ingest_variants(doc: &Value) -> Vec<String> {
    let variants = doc["components"]["schemas"]["IngestRequest"]["oneOf"].as_array().unwrap();
    variants.iter().map(|v| v["properties"]["event_name"]["const"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn the_catalog_events_are_described_with_their_data() {
    let doc = generated();
    assert_eq!(ingest_variants(&doc), ["order.created", "order.paid"]);
    let created = &doc["components"]["schemas"]["IngestRequest"]["oneOf"][0];
    assert_eq!(created["properties"]["data"]["required"][0], "order_id");
    assert_eq!(created["properties"]["data"]["additionalProperties"], false);
    let events = &doc["components"]["schemas"]["CreateWebhook"]["properties"]["event"]["enum"];
    assert_eq!(events, &serde_json::json!(["order.created", "order.paid", "webhook.disabled"]));
    // hookline's own events: never ingested, their data described.
    let disabled = &doc["components"]["schemas"]["webhook.disabled"];
    assert_eq!(disabled["required"], serde_json::json!(["webhook_id", "event", "target_url", "reason", "disabled_at"]));
    assert!(doc["components"]["schemas"]["webhook.test"]["properties"]["sent_at"].is_object());
}

#[test]
fn every_reference_in_the_openapi_document_resolves() {
    fn walk<'a>(v: &'a Value, refs: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    refs.push(r);
                }
                map.values().for_each(|v| walk(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let doc = generated();
    let mut refs = Vec::new();
    walk(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
}

/// What the page loads: `(kind, reference)` for each `<script src>` and
/// `<link href>`, kind being `script`, `stylesheet` or `icon`.
fn referenced_assets(html: &str) -> Vec<(&'static str, String)> {
    fn attribute(element: &str, name: &str) -> Option<String> {
        let start = element.find(&format!("{name}=\""))? + name.len() + 2;
        Some(element[start..start + element[start..].find('"')?].to_owned())
    }
    let mut found = Vec::new();
    for element in html.split('<').skip(1) {
        let element = &element[..element.find('>').unwrap_or(element.len())];
        if element.starts_with("script") {
            found.extend(attribute(element, "src").map(|src| ("script", src)));
        } else if element.starts_with("link") {
            let rel = attribute(element, "rel").unwrap_or_default();
            let kind = if rel.contains("stylesheet") { "stylesheet" } else { "icon" };
            found.extend(attribute(element, "href").map(|href| (kind, href)));
        }
    }
    found
}

backend_tests! {
    async fn the_served_openapi_json_is_the_generated_document(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        assert_eq!(r.json::<Value>().await.unwrap(), generated());
    }

    async fn the_served_document_describes_the_configured_catalog(backend) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog.json");
        std::fs::write(&catalog, r#"{"user.signed_up": {"type": "object", "required": ["user_id"]}}"#).unwrap();
        let app = TestApp::spawn_with(&backend, &["--event-catalog", catalog.to_str().unwrap()]).await;
        let doc: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
        assert_eq!(ingest_variants(&doc), ["user.signed_up"]);
    }

    async fn the_docs_page_loads_every_asset_from_this_server(backend) {
        let app = TestApp::spawn(&backend).await;
        let page = app.http.get(app.url("/docs")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let page_url = page.url().clone();
        assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let html = page.text().await.unwrap();
        let assets = referenced_assets(&html);
        assert!(assets.iter().filter(|(kind, _)| *kind == "script").count() >= 2, "{html}");
        assert!(assets.iter().any(|(kind, _)| *kind == "stylesheet"), "{html}");
        let mut initializer = None;
        for (kind, reference) in &assets {
            let url = page_url.join(reference).unwrap();
            assert_eq!(url.host_str(), page_url.host_str(), "{reference} is on another host");
            assert_eq!(url.port(), page_url.port(), "{reference} is on another server");
            let r = app.http.get(url.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
            let expected = match *kind {
                "script" => "javascript",
                "stylesheet" => "text/css",
                _ => "image/",
            };
            assert!(content_type.contains(expected), "{url} is {content_type}");
            let body = r.bytes().await.unwrap();
            assert!(!body.is_empty(), "{url} is empty");
            if reference.contains("initializer") {
                initializer = Some(String::from_utf8(body.to_vec()).unwrap());
            }
        }
        // The page renders the document this server serves, and calls out to no validator.
        let initializer = initializer.expect("the page loads its configuration script");
        assert!(initializer.contains("\"url\": \"/openapi.json\""), "{initializer}");
        assert!(initializer.contains("\"validatorUrl\": \"none\""), "{initializer}");
        let spec = app.http.get(page_url.join("/openapi.json").unwrap()).send().await.unwrap();
        assert_eq!(spec.status(), 200);
    }
}
