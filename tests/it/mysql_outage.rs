//! MySQL unreachable for 60 s during a paced replay: the speed layer and the serving
//! layer reach MySQL through a TCP proxy of the test ([`TcpProxy`]) that is taken
//! down (every live connection closed, each new one closed at once) and brought back.
//! The speed layer serves dimensions from its cache or waits (a lookup it cannot
//! answer is retried); the API answers final days from its cache or a JSON 503, never
//! other numbers; after recovery the totals are exact. The test's own reads, the
//! replay and the recompute use MySQL directly.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use admetrics_tests::tcp_proxy::TcpProxy;
use admetrics_tests::{TestEnv, busiest_advertiser, days_of, wait_until};

const ROWS: usize = 30_000;
/// The slice spans about 66 hours of event time; at this factor it plays in ~120 s,
/// so the outage falls inside it.
const SPEED: u32 = 2_000;
/// The figure.
const OUTAGE: Duration = Duration::from_secs(60);

/// The address of the MySQL server of `url` (`mysql://user:pw@host:port/db`).
fn mysql_addr(url: &str) -> SocketAddr {
    let opts = mysql_async::Opts::from_url(url).expect("mysql url");
    (opts.ip_or_hostname(), opts.tcp_port())
        .to_socket_addrs()
        .expect("mysql address")
        .next()
        .expect("mysql address")
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
fn via(url: &str, port: u16) -> String {
    let (scheme_auth, rest) = url
        .rsplit_once('@')
        .expect("mysql url with user@host (deploy/local/env.sh)");
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    format!("{scheme_auth}@127.0.0.1:{port}/{path}")
}

/// The rows of an answer on final days (`status: final`): day -> row.
fn final_rows(body: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    body["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["status"] == "final")
                .map(|r| (r["day"].as_str().unwrap_or_default().to_owned(), r.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// One GET with `key`: status, content type, body text, time taken.
async fn get(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    limit: Duration,
) -> (u16, String, String, Duration) {
    let t = Instant::now();
    let resp = tokio::time::timeout(limit, client.get(url).bearer_auth(key).send())
        .await
        .unwrap_or_else(|_| panic!("{url} answered within {limit:?}"))
        .expect("request");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = tokio::time::timeout(limit, resp.text())
        .await
        .expect("body within the limit")
        .unwrap_or_default();
    (status, ctype, text, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_unreachable_for_60_s_mid_replay_answers_cached_or_503_and_ends_exact() {
    // Final days: an earlier slice through its own pipeline (topics, Redis prefix,
    // archive), recomputed into its database; the test's processes then use that
    // database, so the API has final days and this test's Redis only the paced replay.
    // The final days end the day before the paced replay's first day (which only moves
    // later as the clock runs), so no replayed day is final: the replay spans ~66 hours
    // and starts two or three days back depending on the time of day.
    let mut batch = TestEnv::new(2).await;
    batch.data_ends_on = TestEnv::paced_replay_first_day(ROWS).pred_opt();
    let early = batch.replay_through_pipeline(3_000).await;
    batch.kill("speed").await;
    batch.kill("archiver").await;
    let (first, last) = days_of(&early.events);
    batch.recompute(first, last).await;
    let adv = busiest_advertiser(&early.events);

    let mut env = TestEnv::new(2).await;
    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    let direct = batch.cfg.mysql.url.clone();
    let proxy = TcpProxy::start(mysql_addr(direct.expose())).await;
    let proxied: String = via(direct.expose(), proxy.port);

    // The replay loads the dimensions of its rows (upserts) directly, then produces.
    env.cfg.mysql.url = direct.clone();
    let events = env.spawn_paced_replay(ROWS, SPEED);
    let key = env.api_key(&["--advertiser", &adv.to_string()]).await;
    env.cfg.mysql.url = proxied.as_str().into();
    env.spawn("speed", "speed-layer", &["run"]);
    env.start_server().await;

    let today = chrono::Utc::now().date_naive();
    let base = format!("{}/v1/advertisers/{adv}/metrics", env.api_base());
    let urls = [
        format!("{base}?from={first}&to={last}"),
        format!("{base}?from={first}&to={today}"),
        format!("{base}?from={first}&to={today}&group_by=ad"),
    ];
    let client = reqwest::Client::new();
    let timeout = env.cfg.serving.request_timeout;
    let limit = timeout + Duration::from_secs(3);
    let mut before = Vec::new();
    for url in &urls {
        let (s, _, text, _) = get(&client, url, &key, limit).await;
        assert_eq!(s, 200, "{url}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let rows = final_rows(&body);
        assert!(!rows.is_empty(), "{url} has final days: {text}");
        before.push(rows);
    }

    wait_until(
        Duration::from_secs(90),
        "paced events counted by the speed layer",
        || async { env.speed_offsets_stored().await > 500 },
    )
    .await;
    assert!(env.running("replay"), "the outage falls in the replay");

    // The outage. One request a second: the server's throttle on key verifications
    // that miss its cache (60 a minute per client address) is not what is measured.
    let at_down = env.speed_offsets_stored().await;
    proxy.down();
    let down_at = Instant::now();
    let (mut cached, mut unavailable, mut slowest) = (0, 0, Duration::ZERO);
    let mut progress = vec![at_down];
    let mut i = 0;
    while down_at.elapsed() < OUTAGE {
        assert!(
            env.running("speed"),
            "the speed layer runs through the outage:\n{}",
            env.log("speed")
        );
        let url = &urls[i % urls.len()];
        let (s, ctype, text, took) = get(&client, url, &key, limit).await;
        slowest = slowest.max(took);
        assert!(
            took <= timeout + Duration::from_secs(2),
            "{url} answered in {took:?}, past the request timeout {timeout:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{url}: a JSON answer ({s}, {e}): {text:?}"));
        match s {
            200 => {
                assert_eq!(
                    final_rows(&body),
                    before[i % urls.len()],
                    "{url}: a 200 during the outage has the final days' numbers of before"
                );
                cached += 1;
            }
            503 => {
                assert!(ctype.starts_with("application/json"), "{ctype}");
                assert_eq!(body["error"]["code"], "unavailable", "{text}");
                unavailable += 1;
            }
            other => panic!("{url}: {other} during the outage: {text}"),
        }
        progress.push(env.speed_offsets_stored().await);
        i += 1;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(took)).await;
    }
    proxy.up();
    let up_at = Instant::now();
    let stalled = progress.windows(2).filter(|w| w[1] <= w[0]).count();
    let at_up = *progress.last().expect("samples");
    assert!(
        env.running("speed"),
        "the speed layer rode out the outage:\n{}",
        env.log("speed")
    );

    // Back: the same final numbers.
    for (url, want) in urls.iter().zip(&before) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, _, text, _) = get(&client, url, &key, limit).await;
            if s == 200 {
                let body: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(&final_rows(&body), want, "{url} after the outage");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} answers 200 again within 60 s: {s} {text}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let answering_again = up_at.elapsed();

    env.wait_replay_succeeded(Duration::from_secs(300)).await;
    let replay_done = up_at.elapsed();
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(240)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
    let caught_up = up_at.elapsed();
    let retries = env.log_count("speed", "dimension lookup failed; retrying");
    eprintln!(
        "MySQL outage {OUTAGE:?}: speed layer offsets {at_down} -> {at_up} during it, \
         {stalled} of {} one-second samples without progress, {retries} dimension lookups \
         retried; API {cached} answers 200 (cached), {unavailable} 503 (JSON), slowest \
         {slowest:?}; 200 again {answering_again:?} after; the replay ended {replay_done:?} after, the \
         speed layer settled {caught_up:?} after",
        progress.len() - 1
    );
    env.kill("serving").await;
    env.cfg.mysql.url = direct;
    env.settle_and_check(&events, &["speed", "replay"]).await;
    assert!(env.running("speed"), "the speed layer never exited");
}
