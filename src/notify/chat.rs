//! Chat messages: the generic JSON webhook and each chat service's own body.

use serde_json::{Value, json};

use super::Message;

/// ferry's own JSON (see [`Message::payload`]), for the generic webhook.
pub fn webhook_body(msg: &Message) -> Value {
    msg.payload()
}

/// A Slack incoming webhook's body: the text line.
pub fn slack_body(msg: &Message) -> Value {
    json!({ "text": msg.text() })
}

/// A Discord webhook's body: the text line.
pub fn discord_body(msg: &Message) -> Value {
    json!({ "content": msg.text() })
}

/// A Teams webhook's body: the text line.
pub fn teams_body(msg: &Message) -> Value {
    json!({ "text": msg.text() })
}
