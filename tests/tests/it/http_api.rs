//! The management HTTP API over real HTTP: authentication and the overview. The resource
//! families have their own modules (`http_*`).

use serde_json::json;
use warren_tests::TestBroker;

#[tokio::test]
async fn overview_counts_what_a_client_declared() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "http.q".into(),
        Default::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("declare");
    let r = b.api().get("/api/overview").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["object_totals"]["queues"], json!(1));
    assert_eq!(r.json["object_totals"]["connections"], json!(1));
    let who = b.api().get("/api/whoami").await;
    assert_eq!(who.json["name"], json!("guest"));
    b.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_with_rabbitmq_json() {
    let b = TestBroker::start().await;
    for api in [b.api_as("guest", None), b.api_as("guest", Some("wrong"))] {
        let r = api.get("/api/overview").await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert_eq!(r.json["error"], json!("not_authorised"));
    }
    b.stop().await;
}
