//! The serving layer as an advertiser and an attacker see it: final (batch) and
//! provisional (speed) days merged with the right flags, a day turning final while it
//! is read, tenancy on every endpoint, keys, parameters, rate limits (and a noisy
//! neighbour's load), the OpenAPI description and schemathesis's tests generated from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use admetrics_tests::{TestEnv, busiest_advertiser, days_of, get_json};
use common::day::date_of;
use common::event::DAY_MS;

/// Replays a slice through the speed layer and the archiver, then starts the server.
async fn pipeline_with_archive(env: &mut TestEnv, rows: usize) -> admetrics_tests::Replayed {
    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    let r = env.replay_through_pipeline(rows).await;
    env.start_server().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_mixes_final_and_provisional_days_with_the_right_flags() {
    let mut env = TestEnv::new(2).await;
    let r = pipeline_with_archive(&mut env, 15_000).await;
    let adv = busiest_advertiser(&r.events);
    let (first, last) = days_of(&r.events);
    let key = env.api_key(&["--advertiser", &adv.to_string()]).await;
    let url = format!(
        "{}/v1/advertisers/{adv}/metrics?from={first}&to={last}",
        env.api_base()
    );
    let (s, before) = get_json(&url, Some(&key)).await;
    assert_eq!(s, 200, "{before}");
    assert!(before["final_through"].is_null());
    assert!(
        before["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["source"] == "speed")
    );

    // The batch run makes every day but the last final, one day at a time; a reader
    // polls the day being computed meanwhile.
    let final_to = last.pred_opt().unwrap();
    let reader = {
        let url = format!(
            "{}/v1/advertisers/{adv}/metrics?from={final_to}&to={final_to}",
            env.api_base()
        );
        let key = key.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(String, bool, String, i64, i64)> = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline
                && !seen.last().is_some_and(|r| r.0 == "batch")
            {
                let (s, body) = get_json(&url, Some(&key)).await;
                assert_eq!(s, 200, "{body}");
                for row in body["rows"].as_array().unwrap() {
                    seen.push((
                        row["source"].as_str().unwrap().to_owned(),
                        row["provisional"].as_bool().unwrap(),
                        row["status"].as_str().unwrap().to_owned(),
                        row["metrics"]["clicks"].as_i64().unwrap(),
                        row["metrics"]["cost_micros"].as_i64().unwrap(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    env.recompute(first, final_to).await;
    let seen = reader.await.unwrap();
    assert!(
        seen.first().is_some_and(|r| r.0 == "speed") && seen.last().is_some_and(|r| r.0 == "batch"),
        "the reader saw the day turn final: {:?} .. {:?}",
        seen.first(),
        seen.last()
    );
    // Both paths are exact for counts and sums: whichever a read saw, the numbers are
    // the same, and the flags match the source.
    let expected_clicks = seen[0].3;
    for (source, provisional, status, clicks, cost) in &seen {
        match source.as_str() {
            "speed" => assert!(*provisional && status == "provisional"),
            "batch" => assert!(!*provisional && status == "final"),
            other => panic!("unknown source {other}"),
        }
        assert_eq!(*clicks, expected_clicks, "{source} clicks");
        assert_eq!(*cost, seen[0].4, "{source} cost");
    }

    let (s, after) = get_json(&url, Some(&key)).await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["final_through"], final_to.to_string());
    assert_eq!(
        after["totals"]["provisional"], true,
        "the last day is provisional"
    );
    let today = date_of(common::day::now_ms().div_euclid(DAY_MS) as i32);
    let rows_before = before["rows"].as_array().unwrap();
    for (i, row) in after["rows"].as_array().unwrap().iter().enumerate() {
        let day = row["day"].as_str().unwrap();
        if day <= final_to.to_string().as_str() {
            assert_eq!(row["source"], "batch", "{day}");
            assert_eq!(row["provisional"], false, "{day}");
            assert_eq!(row["status"], "final", "{day}");
            assert!(row["computed_at"].is_string(), "{day}");
            assert!(row.get("as_of").is_none(), "{day}");
        } else {
            assert_eq!(row["source"], "speed", "{day}");
            assert_eq!(row["provisional"], true, "{day}");
            assert_eq!(row["status"], "provisional", "{day}");
            assert_eq!(
                row["awaiting_batch"],
                day < today.to_string().as_str(),
                "{day}: a past day on speed numbers says it awaits its batch run"
            );
        }
        // Speed and batch agree exactly on counts and sums, and closely on UV.
        let b = &rows_before[i];
        assert_eq!(b["day"], row["day"]);
        for m in [
            "clicks",
            "cost_micros",
            "orders_direct",
            "orders_indirect",
            "orders_unattributed",
        ] {
            assert_eq!(
                b["metrics"][m], row["metrics"][m],
                "{day} {m}: speed vs batch"
            );
        }
        let (su, bu) = (
            b["metrics"]["uv"].as_f64().unwrap(),
            row["metrics"]["uv"].as_f64().unwrap(),
        );
        assert!(
            (su - bu).abs() <= (bu * 0.02).max(1.0),
            "{day} uv {su} vs {bu}"
        );
    }

    // Freshness tells the same story.
    let (s, f) = get_json(
        &format!("{}/v1/advertisers/{adv}/freshness", env.api_base()),
        Some(&key),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["batch"]["final_through"], final_to.to_string());
    assert_eq!(f["batch"]["last_run"]["status"], "succeeded");
    assert!(f["speed"]["last_write"].is_string(), "{f}");
}

/// A namespace with the dimensions of a small slice, a server and keys for two
/// advertisers and the internal role.
async fn server_with_keys() -> (TestEnv, i64, i64, String, String, String) {
    let mut env = TestEnv::new(1).await;
    let r = env.replay(300).await;
    let mut advs: Vec<i64> = r.events.iter().map(|e| e.advertiser_id).collect();
    advs.sort_unstable();
    advs.dedup();
    let (a, b) = (advs[0], advs[advs.len() - 1]);
    env.start_server().await;
    let ka = env.api_key(&["--advertiser", &a.to_string()]).await;
    let kb = env.api_key(&["--advertiser", &b.to_string()]).await;
    let ki = env.api_key(&["--internal"]).await;
    (env, a, b, ka, kb, ki)
}

/// The serving layer as a library (issue 18): started in-process through its entry
/// point on a listener the test bound, it answers as the binary does (tenancy by key,
/// JSON errors) and returns once its shutdown token fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_layer_runs_in_process_through_its_library_entry_point() {
    let env = TestEnv::new(1).await;
    let r = env.replay(300).await;
    let mut advs: Vec<i64> = r.events.iter().map(|e| e.advertiser_id).collect();
    advs.sort_unstable();
    advs.dedup();
    let (a, b) = (advs[0], advs[advs.len() - 1]);
    let key = env.api_key(&["--advertiser", &a.to_string()]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serving_layer::service::serve(
        env.cfg.clone(),
        listener,
        None,
        shutdown.clone(),
    ));
    admetrics_tests::wait_until(
        Duration::from_secs(30),
        "the in-process server answers",
        || {
            let url = format!("{base}/healthz");
            async move { get_json(&url, None).await.0 == 200 }
        },
    )
    .await;
    let (s, me) = get_json(&format!("{base}/v1/me"), Some(&key)).await;
    assert_eq!((s, me["advertiser_id"].as_i64()), (200, Some(a)), "{me}");
    for url in endpoints(&base, a) {
        assert_eq!(get_json(&url, Some(&key)).await.0, 200, "{url}");
    }
    let (s, body) = get_json(&endpoints(&base, b)[0], Some(&key)).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server returns after shutdown");
    ended.unwrap().expect("a clean stop");
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "nothing listens after the stop"
    );
}

fn endpoints(base: &str, adv: i64) -> Vec<String> {
    vec![
        format!("{base}/v1/advertisers/{adv}/metrics?from=2026-11-01&to=2026-11-02"),
        format!("{base}/v1/advertisers/{adv}/metrics?from=2026-11-01&to=2026-11-02&group_by=ad"),
        format!("{base}/v1/advertisers/{adv}/realtime?minutes=30"),
        format!("{base}/v1/advertisers/{adv}/freshness"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sees_only_its_advertiser_and_bad_keys_get_401() {
    let (env, a, b, ka, kb, ki) = server_with_keys().await;
    let base = env.api_base();
    for url in endpoints(&base, a) {
        assert_eq!(get_json(&url, Some(&ka)).await.0, 200, "{url} own key");
        assert_eq!(get_json(&url, Some(&ki)).await.0, 200, "{url} internal key");
        let (s, body) = get_json(&url, Some(&kb)).await;
        assert_eq!(s, 404, "{url} with another advertiser's key: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body.get("rows").is_none() && body.get("points").is_none());
        // The same answer as for an advertiser that does not exist.
        let ghost = url.replace(&format!("/advertisers/{a}/"), "/advertisers/987654321/");
        assert_eq!(get_json(&ghost, Some(&kb)).await, (s, body.clone()));
        assert_eq!(get_json(&ghost, Some(&ki)).await.0, 404);
        assert_eq!(get_json(&url, None).await.0, 401, "{url} without a key");
        assert_eq!(get_json(&url, Some("amk_nope_nope")).await.0, 401);
    }
    for url in endpoints(&base, b) {
        assert_eq!(get_json(&url, Some(&ka)).await.0, 404, "{url}");
    }
    let (s, me) = get_json(&format!("{base}/v1/me"), Some(&ka)).await;
    assert_eq!((s, me["advertiser_id"].as_i64()), (200, Some(a)));

    // A revoked key stops working within the key cache's bound.
    let key_id = ka.split('_').nth(1).unwrap().to_owned();
    env.run("serving-layer", &["keys", "revoke", &key_id])
        .await
        .expect("revoke");
    let revoked = std::time::Instant::now();
    let bound = env.cfg.serving.key_cache_ttl;
    let body = loop {
        // Judged by when the request was sent, so answer times do not count.
        let sent = revoked.elapsed();
        let (s, body) = get_json(&endpoints(&base, a)[0], Some(&ka)).await;
        if s == 401 {
            eprintln!("revoked key refused to a request sent {sent:?} after `keys revoke`");
            break body;
        }
        assert_eq!(s, 200, "{body}");
        assert!(
            sent < bound + Duration::from_millis(300),
            "the revoked key still works for a request sent {sent:?} after `keys revoke` (bound {bound:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["error"]["code"], "unauthorized");
    // Refused from then on.
    assert_eq!(get_json(&endpoints(&base, a)[1], Some(&ka)).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parameters_get_a_400_naming_the_parameter() {
    let (env, a, _, ka, _, _) = server_with_keys().await;
    let m = format!("{}/v1/advertisers/{a}/metrics", env.api_base());
    let cases = [
        (format!("{m}?from=2026-13-01&to=2026-11-02"), "from"),
        (format!("{m}?from=2026-11-01&to=yesterday"), "to"),
        (format!("{m}?to=2026-11-02"), "from"),
        (format!("{m}?from=2026-11-05&to=2026-11-02"), "from"),
        (format!("{m}?from=2020-01-01&to=2026-11-02"), "to"),
        (
            format!("{m}?from=2026-11-01&to=2026-11-02&group_by=week"),
            "group_by",
        ),
        (
            format!("{}/v1/advertisers/{a}/realtime?minutes=0", env.api_base()),
            "minutes",
        ),
        (
            format!("{}/v1/advertisers/{a}/realtime?minutes=ten", env.api_base()),
            "minutes",
        ),
    ];
    for (url, parameter) in cases {
        let (s, body) = get_json(&url, Some(&ka)).await;
        assert_eq!(s, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "bad_parameter", "{url}");
        assert_eq!(body["error"]["parameter"], parameter, "{url}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_gets_429_with_retry_after() {
    let mut env = TestEnv::new(1).await;
    env.cfg.serving.rate_limit_per_second = 1;
    env.cfg.serving.rate_limit_burst = 3;
    let r = env.replay(50).await;
    let adv = r.events[0].advertiser_id;
    env.start_server().await;
    let key = env.api_key(&["--advertiser", &adv.to_string()]).await;
    let other = env.api_key(&["--advertiser", &adv.to_string()]).await;
    let url = format!("{}/v1/advertisers/{adv}/freshness", env.api_base());
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let resp = client.get(&url).bearer_auth(&key).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "the burst passes");
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs));
    // The limit is per key: another key of the same advertiser still passes.
    assert_eq!(get_json(&url, Some(&other)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let (env, _, _, _, _, _) = server_with_keys().await;
    let (s, spec) = get_json(&format!("{}/openapi.json", env.api_base()), None).await;
    assert_eq!(s, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/me",
        "/v1/advertisers/{id}/metrics",
        "/v1/advertisers/{id}/realtime",
        "/v1/advertisers/{id}/freshness",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(spec["paths"][path]["get"].is_object(), "{path} documented");
    }
    let text = reqwest::get(format!("{}/metrics", env.api_base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(common::telemetry::HTTP_REQUESTS),
        "the server exports its request counter\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_labels_provisional_days_in_a_headless_browser() {
    let mut env = TestEnv::new(2).await;
    let r = pipeline_with_archive(&mut env, 8_000).await;
    let adv = busiest_advertiser(&r.events);
    let (first, last) = days_of(&r.events);
    let final_to = last.pred_opt().unwrap();
    env.recompute(first, final_to).await;
    let key = env.api_key(&["--advertiser", &adv.to_string()]).await;

    let browser = admetrics_tests::webdriver::Browser::start().await;
    browser.goto(&format!("{}/", env.api_base())).await;
    browser.type_into("#key", &key).await;
    browser.click("#login-button").await;
    browser
        .wait_for(
            "the dashboard after log in",
            "return !document.getElementById('app').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser
        .eval(
            "document.getElementById('from').value = arguments[0];\
             document.getElementById('to').value = arguments[1];",
            serde_json::json!([first.to_string(), last.to_string()]),
        )
        .await;
    browser.click("#show").await;
    let days = (last - first).num_days() + 1;
    let rows = browser
        .wait_for(
            "one table row per day of the range",
            &format!(
                "const rows = [...document.querySelectorAll('#days tbody tr')];\
                 if (rows.length !== {days} || rows[0].dataset.day !== '{first}') return null;\
                 return rows.map(r => [r.dataset.day, r.dataset.status, r.children[1].innerText, r.children[3].innerText]);"
            ),
            Duration::from_secs(10),
        )
        .await;
    let rows = rows.as_array().unwrap();
    let mut provisional = 0;
    for row in rows {
        let (day, status, label) = (
            row[0].as_str().unwrap(),
            row[1].as_str().unwrap(),
            row[2].as_str().unwrap(),
        );
        if day <= final_to.to_string().as_str() {
            assert_eq!((status, label), ("final", "final"), "{day}");
        } else {
            provisional += 1;
            assert_eq!(status, "provisional", "{day}");
            assert!(
                label.starts_with("provisional"),
                "{day} is labelled: {label}"
            );
        }
    }
    assert_eq!(provisional, 1, "the last day is provisional");
    // The chart draws provisional days differently and labels them.
    let chart = browser
        .eval(
            "return [document.querySelectorAll('#chart rect.bar.final').length,\
                     document.querySelectorAll('#chart rect.bar.provisional').length,\
                     [...document.querySelectorAll('#chart .provisional-label')].map(t => t.textContent)];",
            serde_json::json!([]),
        )
        .await;
    assert_eq!(chart[0].as_i64(), Some(days - 1), "final bars: {chart}");
    assert_eq!(chart[1].as_i64(), Some(1), "provisional bars: {chart}");
    assert_eq!(chart[2], serde_json::json!(["prov."]));
    // The totals say the range is partly provisional, and the live series has loaded.
    let footer = browser
        .eval(
            "return document.querySelector('#days tfoot').innerText",
            serde_json::json!([]),
        )
        .await;
    assert!(
        footer
            .as_str()
            .unwrap()
            .contains("includes provisional days"),
        "{footer}"
    );
    browser
        .wait_for(
            "the live series",
            "return document.getElementById('live-status').textContent.startsWith('updated')",
            Duration::from_secs(15),
        )
        .await;
    let shot = std::env::temp_dir().join("admetrics-it/dashboard.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("dashboard screenshot: {}", shot.display());
    browser.quit().await;
}

/// A raw HTTP/1.1 exchange: the status line and headers and body of the answer.
async fn raw(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_an_attacker_get_json_errors_and_bounded_connections() {
    let mut env = TestEnv::new(1).await;
    env.cfg.serving.header_read_timeout = Duration::from_secs(2);
    env.cfg.serving.auth_attempts_per_minute = 20;
    let r = env.replay(300).await;
    let a = r.events[0].advertiser_id;
    env.start_server().await;
    let key = env.api_key(&["--advertiser", &a.to_string()]).await;
    let base = env.api_base();
    let m = format!("{base}/v1/advertisers/{a}/metrics");
    let client = reqwest::Client::new();
    let get = |url: String, auth: Vec<String>| {
        let mut req = client.get(url);
        for v in auth {
            req = req.header("authorization", v);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            (status, headers, body)
        }
    };
    let bearer = vec![format!("Bearer {key}")];

    // Dates: year 0000 (used to panic inside the MySQL driver), loose forms, and a
    // 60 KB value that must not be echoed back.
    let huge = "9".repeat(60_000);
    for (q, param) in [
        ("from=0000-01-01&to=2026-11-02", "from"),
        ("from=2026-11-01&to=0999-12-31", "to"),
        ("from=2026-1-8&to=2026-11-02", "from"),
        (
            "from=2026-11-01&to=2026-11-02&group_by=ad&group_by=day",
            "group_by",
        ),
        (&format!("from={huge}&to=2026-11-02") as &str, "from"),
    ] {
        let (s, h, body) = get(format!("{m}?{q}"), bearer.clone()).await;
        let shown = &q[..q.len().min(60)];
        assert_eq!(s, 400, "{shown}: {body}");
        assert_eq!(body["error"]["code"], "bad_parameter", "{shown}");
        assert_eq!(body["error"]["parameter"], param, "{shown}: {body}");
        assert!(
            body.to_string().len() < 300,
            "{shown}: the error echoes no unbounded input"
        );
        assert_eq!(h["content-type"], "application/json", "{shown}");
    }
    // The framework's own rejections have the same JSON shape.
    let (s, _, body) = get(format!("{base}/no/such/route"), vec![]).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let resp = client
        .post(format!("{m}?from=2026-11-01&to=2026-11-02"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (s, _, body) = get(
        format!("{base}/v1/advertisers/%FF%FE/metrics?from=2026-11-01&to=2026-11-02"),
        bearer.clone(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "invalid UTF-8 in the path: {body}"
    );

    // Authorization: the scheme is case-insensitive; two headers are a 400.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let (s, h, body) = get(
            format!("{m}?from=2026-11-01&to=2026-11-02"),
            vec![format!("{scheme} {key}")],
        )
        .await;
        assert_eq!(s, 200, "{scheme}: {body}");
        // Tenant data is never stored by caches; the security headers are on.
        assert_eq!(h["cache-control"], "no-store");
    }
    let (s, _, body) = get(
        format!("{m}?from=2026-11-01&to=2026-11-02"),
        vec![format!("Bearer {key}"), format!("Bearer {key}")],
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["parameter"], "Authorization", "{body}");

    // Security headers on the dashboard and the API.
    for url in [
        format!("{base}/"),
        format!("{base}/v1/me"),
        format!("{base}/healthz"),
    ] {
        let (_, h, _) = get(url.clone(), bearer.clone()).await;
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"),
            "{url}: {csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{url}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{url}");
        assert_eq!(h["x-frame-options"], "DENY", "{url}");
    }

    // Guessing secrets: after auth_attempts_per_minute uncached checks of one key id,
    // 429 without asking MySQL; the valid key, cached, still passes.
    let id = key.split('_').nth(1).unwrap();
    let mut statuses = Vec::new();
    for i in 0..25 {
        let (s, h, _) = get(
            format!("{m}?from=2026-11-01&to=2026-11-02"),
            vec![format!("Bearer amk_{id}_guess{i}")],
        )
        .await;
        if s == 429 {
            assert!(h.contains_key("retry-after"));
        }
        statuses.push(s);
    }
    assert!(statuses[..15].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(
        get(format!("{m}?from=2026-11-01&to=2026-11-02"), bearer.clone())
            .await
            .0,
        200
    );

    // A client sending its headers one byte a second is cut off after
    // header_read_timeout (2 s here); so is one that connects and sends nothing.
    let addr = env.cfg.serving.listen.clone();
    let slow = tokio::spawn({
        let addr = addr.clone();
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let started = std::time::Instant::now();
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnop".iter() {
                if c.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut buf = [0_u8; 256];
                // Closed (0 bytes or an error) ends the probe; a timeout sends on.
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await
                {
                    return started.elapsed();
                }
            }
            panic!(
                "the slow client was never disconnected ({:?})",
                started.elapsed()
            );
        }
    });
    let idle = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0_u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0) | Err(_))),
            "an idle connection is closed"
        );
        started.elapsed()
    });
    let (slow, idle) = (slow.await.unwrap(), idle.await.unwrap());
    eprintln!("slow client cut off after {slow:?}, idle one after {idle:?}");
    assert!(
        slow < Duration::from_secs(5) && idle < Duration::from_secs(5),
        "{slow:?} {idle:?}"
    );
    // The server still answers.
    let answer = raw(
        &env.cfg.serving.listen,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `n` GETs of `url` with `key`, one after the other and one every `every` (a
/// dashboard's pace, below the key's rate limit): each one's status and latency (sent
/// until its whole body has arrived).
async fn paced_gets(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    n: usize,
    every: Duration,
) -> Vec<(u16, Duration)> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let sent = Instant::now();
        let resp = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        resp.bytes().await.expect("answer body");
        out.push((status, sent.elapsed()));
    }
    out
}

/// The 99th percentile (nearest rank) of the latencies of `samples`.
fn p99(samples: &[(u16, Duration)]) -> Duration {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    l.sort_unstable();
    l[(l.len() * 99).div_ceil(100) - 1]
}

/// The median of the latencies of `samples`.
fn p50(samples: &[(u16, Duration)]) -> Duration {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    l.sort_unstable();
    l[l.len() / 2]
}

/// What the noisy key's load generator sent and got back.
#[derive(Debug, Default)]
struct Load {
    /// Requests answered.
    sent: u64,
    /// Answered 200.
    admitted: u64,
    /// Answered 429.
    limited: u64,
    /// Any other status.
    other: Vec<u16>,
    /// From the first request to the stop.
    elapsed: Duration,
}

/// Sends GET `url` with `key` at `rate` requests per second in all, from `tasks`
/// concurrent tasks (each on a connection of its own, each waiting for its answer
/// before the next), until `stop` is set or `max` has passed.
///
/// It runs on a thread and a runtime of its own: the neighbour is another client, so
/// its tasks must not queue on the test runtime's workers with the measured key's
/// requests (that would measure the test client, not the server).
fn noisy_load(
    url: String,
    key: String,
    rate: u32,
    tasks: u32,
    stop: Arc<AtomicBool>,
    max: Duration,
) -> std::thread::JoinHandle<Load> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("load runtime");
        rt.block_on(async move {
            let started = Instant::now();
            let period = Duration::from_secs_f64(f64::from(tasks) / f64::from(rate));
            let mut set = tokio::task::JoinSet::new();
            for i in 0..tasks {
                let (url, key, stop) = (url.clone(), key.clone(), Arc::clone(&stop));
                set.spawn(async move {
                    let client = reqwest::Client::new();
                    // Staggered, so that the tasks' requests spread over each period.
                    tokio::time::sleep(period * i / tasks).await;
                    // Burst (the default): a late tick is made up, the rate holds.
                    let mut tick = tokio::time::interval(period);
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
                        tick.tick().await;
                        let resp = client.get(&url).bearer_auth(&key).send().await;
                        let resp = resp.expect("the noisy key's request is answered");
                        statuses.push(resp.status().as_u16());
                        resp.bytes().await.ok();
                    }
                    statuses
                });
            }
            let mut load = Load::default();
            while let Some(statuses) = set.join_next().await {
                for s in statuses.expect("load task") {
                    load.sent += 1;
                    match s {
                        200 => load.admitted += 1,
                        429 => load.limited += 1,
                        other => load.other.push(other),
                    }
                }
            }
            load.elapsed = started.elapsed();
            load
        })
    })
}

/// Issue 17, noisy neighbour: one key sending ten times its rate limit (most of it
/// answered 429) leaves another key's p99 within twice its quiet p99.
///
/// Two advertisers' keys on a server with final (batch) and provisional (speed) days;
/// the measured key B reads its day totals of a 30-day range, the dashboard's main
/// request, at a steady pace below its limit: 400 requests quiet, then 400 more while
/// key A sends ten times its limit from 8 concurrent connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_ten_times_its_rate_limit_leaves_another_keys_p99_within_twice_its_quiet_p99() {
    // Per key, and its burst: low, so that ten times it is a load the test can send
    // on these 2 cores while the server answers.
    const LIMIT: u32 = 20;
    const SAMPLES: usize = 400;
    // The quiet p99 is floored at 2 ms: a sub-millisecond p99 doubled is well within
    // the scheduling noise of a shared 2-core machine, which would fail the test
    // without the server doing anything wrong.
    const P99_FLOOR: Duration = Duration::from_millis(2);
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    env.cfg.serving.rate_limit_per_second = LIMIT;
    env.cfg.serving.rate_limit_burst = LIMIT;
    let r = env.replay_through_pipeline(15_000).await;
    let (first, last) = days_of(&r.events);
    env.recompute(first, last.pred_opt().unwrap()).await;
    // Only the server's work is measured: the pipeline is done with the data.
    env.terminate("speed", Duration::from_secs(30)).await;
    env.terminate("archiver", Duration::from_secs(30)).await;
    env.start_server().await;

    let mut events_of: std::collections::HashMap<i64, usize> = Default::default();
    for e in &r.events {
        *events_of.entry(e.advertiser_id).or_default() += 1;
    }
    let b = busiest_advertiser(&r.events);
    let a = events_of
        .iter()
        .filter(|(adv, _)| **adv != b)
        .max_by_key(|(adv, n)| (**n, **adv))
        .map(|(adv, _)| *adv)
        .expect("a second advertiser");
    let kb = env.api_key(&["--advertiser", &b.to_string()]).await;
    let ka = env.api_key(&["--advertiser", &a.to_string()]).await;
    let from = last - chrono::Days::new(29);
    let url = |adv: i64| {
        format!(
            "{}/v1/advertisers/{adv}/metrics?from={from}&to={last}",
            env.api_base()
        )
    };
    let (url_a, url_b) = (url(a), url(b));
    // B at 80 % of its limit.
    let every = Duration::from_secs_f64(1.25 / f64::from(LIMIT));

    let measured = tokio::time::timeout(Duration::from_secs(180), async {
        let client = reqwest::Client::new();
        // Warm: B's connection, its key in the key cache, its answer in the cache.
        let warm = paced_gets(&client, &url_b, &kb, 20, every).await;
        assert!(warm.iter().all(|s| s.0 == 200), "warm-up: {warm:?}");
        let quiet = paced_gets(&client, &url_b, &kb, SAMPLES, every).await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = noisy_load(
            url_a.clone(),
            ka.clone(),
            10 * LIMIT,
            8,
            Arc::clone(&stop),
            Duration::from_secs(120),
        );
        // A's burst is gone within a tenth of a second; after a second its load is
        // steady, refused nine times in ten.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let noisy = paced_gets(&client, &url_b, &kb, SAMPLES, every).await;
        stop.store(true, Ordering::Relaxed);
        let load = tokio::task::spawn_blocking(move || load.join())
            .await
            .unwrap()
            .expect("the load thread");
        (quiet, noisy, load)
    })
    .await;
    let (quiet, noisy, load) = measured.expect("the measurement ends within 180 s");

    let secs = load.elapsed.as_secs_f64();
    let (rate, limited_share) = (
        load.sent as f64 / secs,
        load.limited as f64 / load.sent.max(1) as f64,
    );
    let (quiet_p99, noisy_p99) = (p99(&quiet), p99(&noisy));
    let bound = 2 * quiet_p99.max(P99_FLOOR);
    eprintln!(
        "noisy neighbour: B (advertiser {b}, {SAMPLES} requests each, every {every:?}) quiet p50 {:?} p99 {quiet_p99:?}; \
         noisy p50 {:?} p99 {noisy_p99:?} (bound {bound:?}); A (advertiser {a}, limit {LIMIT}/s) sent {} in {secs:.1} s = {rate:.0}/s, \
         {} admitted, {} answered 429 ({:.1} %)",
        p50(&quiet),
        p50(&noisy),
        load.sent,
        load.admitted,
        load.limited,
        100.0 * limited_share,
    );
    for (phase, samples) in [("quiet", &quiet), ("noisy", &noisy)] {
        let not_ok: Vec<u16> = samples.iter().map(|s| s.0).filter(|s| *s != 200).collect();
        assert!(
            not_ok.is_empty(),
            "B {phase}: statuses other than 200: {not_ok:?}"
        );
    }
    assert!(
        load.other.is_empty(),
        "A got only 200 and 429: {:?}",
        load.other
    );
    assert!(
        rate >= 9.0 * f64::from(LIMIT),
        "A sent {rate:.0}/s, not about 10x its limit of {LIMIT}/s"
    );
    // The limiter held: A got its burst and its rate, no more.
    let allowed = f64::from(LIMIT) * (1.0 + secs) + 2.0;
    let admitted = load.admitted as f64;
    assert!(
        admitted <= allowed,
        "A was admitted {admitted} times in {secs:.1} s with a limit of {LIMIT}/s"
    );
    assert!(limited_share >= 0.8, "most of A's requests are refused");
    assert!(
        noisy_p99 <= bound,
        "B's p99 under A's load {noisy_p99:?} exceeds twice its quiet p99 {quiet_p99:?} (floored at {P99_FLOOR:?})"
    );
}

/// The schemathesis executable: `ADMETRICS_SCHEMATHESIS`, which `deploy/local/test.sh`
/// sets after installing the pinned version into a venv. Panics when it is missing.
fn schemathesis_binary() -> PathBuf {
    let path = std::env::var_os("ADMETRICS_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "ADMETRICS_SCHEMATHESIS is not set: run the tests with deploy/local/test.sh, which installs schemathesis (PyPI, pinned) into a venv and sets it to its bin/schemathesis"
        )
    });
    assert!(
        path.is_file(),
        "ADMETRICS_SCHEMATHESIS={} does not exist: deploy/local/test.sh installs it",
        path.display()
    );
    path
}

/// Runs `schemathesis [--config-file config] run <server>/openapi.json` with every
/// check, 50 cases per operation and the hooks of `schemathesis_hooks.py`, and
/// returns its exit status and output; panics after `timeout`.
async fn schemathesis_run(
    env: &TestEnv,
    key: &str,
    config: Option<&std::path::Path>,
    timeout: Duration,
) -> (std::process::ExitStatus, String) {
    let mut cmd = tokio::process::Command::new(schemathesis_binary());
    cmd.arg("--no-color");
    if let Some(c) = config {
        cmd.arg("--config-file").arg(c);
    }
    cmd.args([
        "run",
        &format!("{}/openapi.json", env.api_base()),
        "--header",
        &format!("Authorization: Bearer {key}"),
        "--checks",
        "all",
        "--max-examples",
        "50",
        "--request-timeout",
        "10",
    ])
    .env(
        "SCHEMATHESIS_HOOKS",
        concat!(env!("CARGO_MANIFEST_DIR"), "/it/schemathesis_hooks.py"),
    )
    .env(
        "ADMETRICS_MAX_RANGE_DAYS",
        env.cfg.serving.max_range_days.to_string(),
    )
    // Hypothesis keeps its example database in the working directory.
    .current_dir(&env.state_dir)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {timeout:?}"))
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Issue 17, bad input: schemathesis (property-based tests generated from
/// `/openapi.json`, every check) finds 0 server errors and 0 answers that break the
/// document, on a server with final and provisional days and an internal key.
///
/// Two runs: with the advertiser ids it generates (almost all unknown: 404s, and
/// whatever ids and queries it makes up), then with the id pinned to the advertiser
/// with the data (a `schemathesis.toml` `[parameters]` entry), so that every route
/// answers its real rows and each is checked against its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    schemathesis_binary();
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    // Schemathesis sends thousands of requests from one address, many with made-up
    // keys: neither limit may turn its answers into 429s.
    env.cfg.serving.rate_limit_per_second = 100_000;
    env.cfg.serving.rate_limit_burst = 100_000;
    env.cfg.serving.auth_attempts_per_minute = 1_000_000;
    let r = env.replay_through_pipeline(5_000).await;
    let (first, last) = days_of(&r.events);
    env.recompute(first, last.pred_opt().unwrap()).await;
    env.terminate("speed", Duration::from_secs(30)).await;
    env.terminate("archiver", Duration::from_secs(30)).await;
    env.start_server().await;
    let adv = busiest_advertiser(&r.events);
    let key = env.api_key(&["--internal"]).await;
    let pinned = env.state_dir.join("schemathesis.toml");
    std::fs::write(&pinned, format!("[parameters]\nid = {adv}\n")).expect("schemathesis.toml");

    for (what, config) in [
        ("generated ids", None),
        ("id pinned", Some(pinned.as_path())),
    ] {
        let (status, out) = schemathesis_run(&env, &key, config, Duration::from_secs(300)).await;
        let summary: Vec<&str> = out.lines().skip_while(|l| !l.contains("SUMMARY")).collect();
        eprintln!("schemathesis, {what}:\n{}", summary.join("\n"));
        assert!(
            status.success(),
            "schemathesis, {what}, failed ({status}):\n{out}\n--- serving:\n{}",
            env.log("serving")
        );
    }
}
