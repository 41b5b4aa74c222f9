//! `kind = "email"`: a message through an SMTP relay with `lettre`.
//!
//! A failed or rolled back deploy sends its failure report (the subject is the report's
//! title); any other event the notifier asked for (`deploy.succeeded` and the rest) sends a
//! short summary. Each email is `multipart/alternative`: the markdown as `text/plain`, and the
//! same rendered to `text/html` by pulldown-cmark, where raw HTML in the markdown is shown as
//! text, never passed through (a report carries the app's own output), links are shown as text
//! and images never loaded. Both parts end with the dashboard link, the one link to click.
//!
//! The connection: STARTTLS (port 587) or TLS from the first byte (465), or clear text to a
//! loopback relay (`tls = "none"`, which the config allows only there); rustls on ring with the
//! system's roots plus `ca_file`. The user and password are read from the variables that
//! `username_env` and `password_env` name when the email is sent, and never logged or
//! recorded. A 4xx, a network error or a connection closed mid-answer is worth another
//! attempt; a 5xx (a refused login, sender or recipient), an untrusted certificate or a relay
//! without STARTTLS is not.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use pulldown_cmark::{CodeBlockKind, CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

use super::report::{duration, version};
use super::{Ctx, Delivered, Failure, Message, TIMEOUT};
use crate::config::{Email, Notify, SmtpTls};

/// One attempt's limit, from connecting to the relay's answer to the message. lettre's own
/// timeout ([`TIMEOUT`]) covers only the connection; a relay that accepts and then says
/// nothing (a tarpit, a greeting delay, a stuck handshake) is cut off by this one.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);
/// The longest subject line sent (a title cut with "…").
const SUBJECT_MAX: usize = 200;

/// What an email says: its subject and its markdown (before the dashboard link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub subject: String,
    pub markdown: String,
}

/// Sends `msg` to `cfg.to` through the relay, once.
pub async fn deliver(
    _ctx: &Ctx,
    notifier: &Notify,
    cfg: &Email,
    msg: &Message,
) -> Result<Delivered, Failure> {
    send(&notifier.name, cfg, msg).await
}

/// [`deliver`] without the context it does not need.
async fn send(notifier: &str, cfg: &Email, msg: &Message) -> Result<Delivered, Failure> {
    let mail = compose(cfg, notifier, msg)?;
    let relay = transport(cfg, hello_name(msg.link.as_deref()))?;
    let sent = tokio::time::timeout(ATTEMPT_LIMIT, relay.send(mail)).await;
    match sent {
        Err(_) => Err(Failure::Retry(format!(
            "the relay {}:{} took longer than {}s",
            cfg.smtp_host,
            cfg.smtp_port,
            ATTEMPT_LIMIT.as_secs()
        ))),
        Ok(Err(e)) => Err(failure(cfg, &e)),
        Ok(Ok(answer)) => Ok(Delivered {
            answer: format!(
                "{} {}",
                answer.code(),
                answer.message().collect::<Vec<_>>().join(" ")
            )
            .trim_end()
            .to_string(),
            link: None,
        }),
    }
}

/// The subject and markdown for `msg`: the failure report, else a summary.
pub fn content(msg: &Message) -> Content {
    match msg.report() {
        Some(r) => Content {
            subject: one_line(&r.title),
            markdown: r.markdown,
        },
        None => Content {
            subject: one_line(&msg.text()),
            markdown: summary(msg),
        },
    }
}

/// The email itself: headers, the plain part and the HTML part.
pub fn compose(cfg: &Email, notifier: &str, msg: &Message) -> Result<lettre::Message, Failure> {
    let from: Mailbox = cfg.from.parse().map_err(|e| {
        Failure::Fatal(format!(
            "from = \"{}\" is not an email address: {e}",
            cfg.from
        ))
    })?;
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .message_id(Some(message_id(&from, notifier, msg)))
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string());
    for to in &cfg.to {
        let to: Mailbox = to
            .parse()
            .map_err(|e| Failure::Fatal(format!("to: \"{to}\" is not an email address: {e}")))?;
        builder = builder.to(to);
    }
    let c = content(msg);
    let link = msg.link.as_deref().filter(|l| safe_link(l));
    let mut plain = c.markdown.trim_end().to_string();
    if let Some(l) = link {
        plain.push_str(&format!("\n\nIn the dashboard: {l}\n"));
    }
    let html = html(&c.subject, &c.markdown, link);
    builder
        .subject(c.subject)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(plain),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html),
                ),
        )
        .map_err(|e| Failure::Fatal(format!("cannot build the email: {e}")))
}

/// `<ferry.{app}.{notifier}.{deployment}.{event}.{hash}@{the sender's domain}>`, the same for
/// every attempt at one message (the hash is of what it is about and when), so a copy sent
/// again after a lost answer can be recognised as the same email.
fn message_id(from: &Mailbox, notifier: &str, msg: &Message) -> String {
    use sha2::Digest;
    let about = match &msg.deployment {
        Some(d) => format!("{}.{}", d.id, msg.event),
        None => msg.event.to_string(),
    };
    let mut hash = sha2::Sha256::new();
    for part in [&msg.app, notifier, &msg.environment, &about, &msg.at] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    format!(
        "<ferry.{}.{}.{}.{}@{}>",
        clean(&msg.app),
        clean(notifier),
        clean(&about).replace('-', "."),
        hex::encode(&hash.finalize()[..8]),
        from.email.domain()
    )
}

/// The name ferry gives in `EHLO`: the host of its public URL when that is a domain name
/// (relays may refuse a name that is not fully qualified), else this machine's name when it
/// is one, else the address literal `[127.0.0.1]`, as RFC 5321 allows for a client without a
/// name.
fn hello_name(link: Option<&str>) -> ClientId {
    let system = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    hello_from(link, system.as_deref())
}

fn hello_from(link: Option<&str>, system: Option<&str>) -> ClientId {
    let fqdn = |h: &str| {
        h.contains('.')
            && !h.starts_with('[')
            && !h.ends_with('.')
            && h.parse::<std::net::IpAddr>().is_err()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    let public = link
        .and_then(|l| reqwest::Url::parse(l).ok())
        .and_then(|u| u.host_str().map(str::to_string));
    match public
        .filter(|h| fqdn(h))
        .or_else(|| system.filter(|h| fqdn(h)).map(str::to_string))
    {
        Some(d) => ClientId::Domain(d),
        None => ClientId::default(),
    }
}

/// The relay connection `cfg` describes, with the credentials read now.
fn transport(cfg: &Email, hello: ClientId) -> Result<AsyncSmtpTransport<Tokio1Executor>, Failure> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.smtp_host)
        .port(cfg.smtp_port)
        .hello_name(hello)
        .timeout(Some(TIMEOUT));
    if cfg.tls != SmtpTls::None {
        let mut params = TlsParameters::builder(cfg.smtp_host.clone());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Failure::Fatal(format!("cannot read ca_file {}: {e}", path.display()))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                Failure::Fatal(format!(
                    "ca_file {} holds no PEM certificate: {e}",
                    path.display()
                ))
            })?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| Failure::Fatal(format!("cannot set up TLS: {e}")))?;
        builder = builder.tls(match cfg.tls {
            SmtpTls::Tls => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let Some(creds) = credentials(cfg)? {
        builder = builder.credentials(creds);
    }
    Ok(builder.build())
}

/// The user and password from ferry's environment; `Fatal` names a missing variable (never
/// a value).
fn credentials(cfg: &Email) -> Result<Option<Credentials>, Failure> {
    let read = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Failure::Fatal(format!("{var} is not set in ferry's environment")))
    };
    match (&cfg.username_env, &cfg.password_env) {
        (Some(user), Some(password)) => Ok(Some(Credentials::new(read(user)?, read(password)?))),
        (None, None) => Ok(None),
        _ => Err(Failure::Fatal(
            "username_env and password_env go together".into(),
        )),
    }
}

/// What a failed attempt is: worth retrying or not, said without secrets.
fn failure(cfg: &Email, e: &lettre::transport::smtp::Error) -> Failure {
    let relay = format!("{}:{}", cfg.smtp_host, cfg.smtp_port);
    if let Some(code) = e.status() {
        let code = code.to_string();
        if e.is_transient() {
            return Failure::Retry(format!("the relay {relay} said to try later: {e}"));
        }
        let what = match code.as_str() {
            "530" | "534" | "535" | "538" => {
                let vars = match (&cfg.username_env, &cfg.password_env) {
                    (Some(u), Some(p)) => format!("check {u} and {p}"),
                    _ => "it wants a login: set username_env and password_env".into(),
                };
                format!("the relay {relay} refused the login ({vars})")
            }
            "550" | "551" | "553" => format!("the relay {relay} refused the sender or a recipient"),
            _ => format!("the relay {relay} refused the message"),
        };
        return Failure::Fatal(format!("{what}: {e}"));
    }
    if untrusted_certificate(e) {
        return Failure::Fatal(format!(
            "the relay {relay}'s certificate is not trusted (give its CA in ca_file): {e}"
        ));
    }
    if e.is_client() {
        // STARTTLS not offered, no login mechanism in common, an address it cannot take
        return Failure::Fatal(format!("the relay {relay} cannot take this email: {e}"));
    }
    if e.is_response() {
        // mostly a relay that closed the connection mid-answer (a restart, an idle cut): the
        // next attempt usually goes through, and the attempts are few
        return Failure::Retry(format!(
            "the relay {relay} broke off or answered something unreadable: {e}"
        ));
    }
    if e.is_tls() {
        return Failure::Fatal(format!("TLS with the relay {relay} failed: {e}"));
    }
    Failure::Retry(format!("cannot reach the relay {relay}: {e}"))
}

/// A rustls certificate error anywhere in `e`'s chain (tokio-rustls hands it over inside an
/// `io::Error`, whose `source()` skips it).
fn untrusted_certificate(e: &lettre::transport::smtp::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented,
            ) = candidate.downcast_ref::<rustls::Error>()
            {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// `text` on one line (no header injection), cut to [`SUBJECT_MAX`] characters.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    if line.chars().count() <= SUBJECT_MAX {
        return line.to_string();
    }
    let cut: String = line.chars().take(SUBJECT_MAX - 1).collect();
    format!("{}…", cut.trim_end())
}

/// A summary of an event that is not a failure: the text line, the facts, the steps.
pub fn summary(msg: &Message) -> String {
    let mut md = format!("{}\n\n", cell(&msg.text()));
    let mut fact = |name: &str, value: &str| md.push_str(&format!("- **{name}:** {value}\n"));
    fact("App", &cell(&msg.app));
    fact("Environment", &cell(&msg.environment));
    match &msg.deployment {
        Some(d) => {
            let commit = d
                .commit_sha
                .as_deref()
                .map(|c| format!(" (`{}`)", &c[..12.min(c.len())]))
                .unwrap_or_default();
            fact("Version", &format!("{}{commit}", cell(&version(d))));
            fact("Deployment", &format!("{} ({})", d.id, d.state.as_str()));
            fact("Triggered by", &cell(&d.by()));
            if let Some(a) = d.approved() {
                fact("Approved by", &cell(&a));
            }
            if let Some(s) = duration(d) {
                fact("Took", &format!("{s:.1}s"));
            }
            if let Some(r) = &d.reason {
                fact("Reason", &cell(r));
            }
        }
        None => {
            if let Some(w) = &msg.who {
                fact("By", &cell(w));
            }
            if let Some(m) = &msg.detail {
                fact("Message", &cell(m));
            }
        }
    }
    fact("At", &msg.at);
    if !msg.steps.is_empty() {
        md.push_str("\n## Steps\n\n| step | state | took |\n|---|---|---|\n");
        for s in &msg.steps {
            let took = seconds(&s.started_at, s.finished_at.as_deref())
                .map_or("-".to_string(), |t| format!("{t:.1}s"));
            md.push_str(&format!(
                "| {} | {} | {took} |\n",
                cell(&s.name),
                s.state.as_str()
            ));
        }
    }
    md
}

fn seconds(start: &str, end: Option<&str>) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(end?).ok()?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

/// Text on one line that cannot end a table cell or start a block.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// Only a dashboard link like these is made clickable.
fn safe_link(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    ["https://", "http://", "mailto:"]
        .iter()
        .any(|s| lower.starts_with(s))
}

/// `markdown` as an HTML document: tables on; raw HTML (blocks and inline) escaped and shown
/// as text; links and images shown as their text (and address), never followed or loaded;
/// then the one clickable link, to `link`.
pub fn html(title: &str, markdown: &str, link: Option<&str>) -> String {
    let parser = Parser::new_ext(
        markdown,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    );
    // what to add where each open link or image ends: the link's address, as text
    let mut open: Vec<Option<String>> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    for event in parser {
        let keep = match event {
            Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
            Event::Start(Tag::HtmlBlock) => {
                Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(CowStr::from(""))))
            }
            Event::End(TagEnd::HtmlBlock) => Event::End(TagEnd::CodeBlock),
            // a link in the markdown came from a name, a reason or the app's output: it is
            // shown, never made clickable (only ferry's own dashboard link is)
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                ..
            }) => {
                open.push(match link_type {
                    LinkType::Autolink | LinkType::Email => None,
                    _ => Some(format!(" ({dest_url})")),
                });
                continue;
            }
            Event::Start(Tag::Image { .. }) => {
                open.push(None);
                continue;
            }
            Event::End(TagEnd::Link | TagEnd::Image) => match open.pop().flatten() {
                Some(address) => Event::Text(CowStr::from(address)),
                None => continue,
            },
            other => other,
        };
        events.push(keep);
    }
    if let Some(l) = link.filter(|l| safe_link(l)) {
        events.extend([
            Event::Start(Tag::Paragraph),
            Event::Start(Tag::Link {
                link_type: LinkType::Inline,
                dest_url: CowStr::from(l.to_string()),
                title: CowStr::from(""),
                id: CowStr::from(""),
            }),
            Event::Text(CowStr::from("Open it in the ferry dashboard")),
            Event::End(TagEnd::Link),
            Event::End(TagEnd::Paragraph),
        ]);
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events.into_iter());
    let mut title_html = String::new();
    pulldown_cmark::html::push_html(
        &mut title_html,
        [Event::Text(CowStr::from(title.to_string()))].into_iter(),
    );
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title_html}</title>\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}\
         th,td{{border:1px solid #ccc;padding:2px 8px;text-align:left}}\
         pre{{background:#f6f8fa;padding:8px;white-space:pre-wrap}}</style></head>\n\
         <body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
#[path = "email_tests.rs"]
mod tests;
