//! `hookline bench` runs end to end. It measures nothing here: performance is
//! judged by running the benchmark, not by timed tests.

use serde_json::Value;

#[test]
fn the_benchmark_delivers_every_event_and_reports_json() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["bench", "--events", "300", "--concurrency", "4", "--webhooks", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ingest"]["accepted"], 300);
    assert_eq!(result["delivery"]["expected"], 600);
    assert_eq!(result["delivery"]["delivered"], 600);
    assert_eq!(result["delivery"]["complete"], true);
    assert!(result["delivery"]["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(result["server"]["peak_rss_mb"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_drain_scenario_delivers_a_backlog_after_a_restart() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["bench", "--scenario", "drain", "--events", "300", "--concurrency", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["delivery"]["delivered"], 300);
    assert_eq!(result["delivery"]["complete"], true);
}
