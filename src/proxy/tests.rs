use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;

use super::*;

/// A backend that names itself, echoes forwarding headers, and has a slow route.
async fn backend(name: &'static str) -> SocketAddr {
    let app = Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                format!(
                    "{name} host={} xff={} proto={}",
                    h("host"),
                    h("x-forwarded-for"),
                    h("x-forwarded-proto")
                )
            }),
        )
        .route(
            "/cookies",
            get(move |headers: HeaderMap| async move {
                let cookies: Vec<&str> = headers
                    .get_all("cookie")
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect();
                (
                    axum::response::AppendHeaders([
                        ("set-cookie", "app=2; Path=/"),
                        ("set-cookie", "ferry_session=planted; Path=/"),
                        ("set-cookie", "__Host-ferry_session=planted; Path=/; Secure"),
                    ]),
                    format!("{} cookie headers: {}", cookies.len(), cookies.join(" | ")),
                )
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                format!("{name} slow")
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn start_proxy() -> (Proxy, String, watch::Sender<bool>) {
    let proxy = Proxy::new("staging");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(
        proxy
            .clone()
            .serve(listener, crate::config::ProxySettings::DEFAULT, rx),
    );
    (proxy, url, tx)
}

fn client() -> reqwest::Client {
    crate::http_builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn without_an_instance_it_answers_503_in_plain_words() {
    let (_proxy, url, _stop) = start_proxy().await;
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.text().await.unwrap(),
        "no release is running in environment staging yet\n"
    );
}

#[tokio::test]
async fn forwards_host_and_adds_forwarding_headers() {
    let (proxy, url, _stop) = start_proxy().await;
    proxy.switch(Some(Upstream::new(backend("a").await)));
    let body = client()
        .get(&url)
        .header("host", "app.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "a host=app.example xff=127.0.0.1 proto=http");
}

#[tokio::test]
async fn switch_sends_new_requests_to_the_new_upstream_while_old_ones_finish() {
    let (proxy, url, _stop) = start_proxy().await;
    proxy.switch(Some(Upstream::new(backend("a").await)));
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            client()
                .get(format!("{url}/slow"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let old = proxy
        .switch(Some(Upstream::new(backend("b").await)))
        .unwrap();
    assert_eq!(old.in_flight(), 1);
    let body = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("b "), "{body}");
    let started = Instant::now();
    assert_eq!(old.drain(Duration::from_secs(5)).await, 0);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(slow.await.unwrap(), "a slow");
}

#[tokio::test]
async fn drain_gives_up_at_its_timeout() {
    let (proxy, url, _stop) = start_proxy().await;
    proxy.switch(Some(Upstream::new(backend("a").await)));
    let _slow = tokio::spawn(async move { client().get(format!("{url}/slow")).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let old = proxy.switch(None).unwrap();
    assert_eq!(old.drain(Duration::from_millis(50)).await, 1);
}

#[tokio::test]
async fn a_dead_upstream_is_a_502_and_counted() {
    let (proxy, url, _stop) = start_proxy().await;
    let port = crate::runtime::free_port().unwrap();
    proxy.switch(Some(Upstream::new(SocketAddr::from((
        [127, 0, 0, 1],
        port,
    )))));
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(proxy.stats().errors.load(Ordering::Relaxed), 1);
    assert_eq!(proxy.upstream().unwrap().in_flight(), 0);
}

#[tokio::test]
async fn maintenance_answers_503_with_a_page_and_retry_after_then_traffic_resumes() {
    let (proxy, url, _stop) = start_proxy().await;
    proxy.switch(Some(Upstream::new(backend("app").await)));
    proxy.set_maintenance(Some("Back at <5pm>".into()));
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "120");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("Down for maintenance") && body.contains("Back at &lt;5pm&gt;"),
        "{body}"
    );
    proxy.set_maintenance(None);
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn ferry_cookies_never_reach_the_app_and_the_app_cannot_set_them() {
    let (proxy, url, _stop) = start_proxy().await;
    proxy.switch(Some(Upstream::new(backend("app").await)));
    let get = |cookie: &'static str| {
        let url = url.clone();
        async move {
            let mut req = client().get(format!("{url}/cookies"));
            if !cookie.is_empty() {
                req = req.header("cookie", cookie);
            }
            let resp = req.send().await.unwrap();
            let set: Vec<String> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (resp.text().await.unwrap(), set)
        }
    };
    let (body, set) =
        get("app=1; ferry_session=ferrysession_s3cret;theme=dark ; __Host-ferry_session=x").await;
    assert_eq!(body, "1 cookie headers: app=1; theme=dark");
    assert_eq!(set, ["app=2; Path=/"], "the app's own cookie only");
    let (body, _) = get("ferry_session=ferrysession_s3cret").await;
    assert_eq!(body, "0 cookie headers: ", "nothing left: no Cookie header");
    // an app cookie whose name merely contains ferry's is the app's
    let (body, _) = get("my_ferry_session=1; ferry_session_x=2").await;
    assert_eq!(
        body,
        "1 cookie headers: my_ferry_session=1; ferry_session_x=2"
    );
    let (body, _) = get("").await;
    assert_eq!(body, "0 cookie headers: ");
}
