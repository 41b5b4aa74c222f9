//! The issue trackers' and email's keys of `[[notify]]`, checked.

use std::ops::Range;
use std::path::PathBuf;

use super::super::Diagnostic;
use super::super::raw::Fail;
use super::{
    Email, GITHUB_API, GITLAB_API, RawNotify, SmtpTls, Tracker, env_name, first_line, is_http_url,
    is_ipv6, loopback, url_host,
};

pub(super) fn tracker(
    r: &RawNotify,
    github: bool,
    span: &Range<usize>,
    fail: &Fail,
) -> Result<Tracker, Diagnostic> {
    let (key, written) = if github {
        ("repository", &r.repository)
    } else {
        ("project", &r.project)
    };
    let Some(repo) = written else {
        return Err(fail(
            first_line(span),
            format!(
                "a {} notifier needs {key}",
                if github {
                    "github-issue"
                } else {
                    "gitlab-issue"
                }
            ),
            if github {
                "add repository = \"owner/name\""
            } else {
                "add project = \"group/name\" (its path) or its numeric id"
            },
        ));
    };
    let ok = if github {
        super::super::valid_repository(repo.get_ref()) && repo.get_ref().split('/').count() == 2
    } else {
        super::super::valid_repository(repo.get_ref())
            || (!repo.get_ref().is_empty() && repo.get_ref().chars().all(|c| c.is_ascii_digit()))
    };
    if !ok {
        return Err(fail(
            repo.span(),
            format!("\"{}\" is not a {key} name", repo.get_ref()),
            if github {
                "write it as GitHub shows it: \"owner/name\""
            } else {
                "write its path as GitLab shows it (\"group/subgroup/name\") or its numeric id"
            },
        ));
    }
    let Some(token) = &r.token_env else {
        return Err(fail(
            first_line(span),
            "an issue tracker needs token_env".into(),
            "add token_env = \"FERRY_GITHUB_TOKEN\": the variable holding the API token",
        ));
    };
    let token_env = env_name(token, fail)?;
    let api = match &r.api {
        None => (if github { GITHUB_API } else { GITLAB_API }).to_string(),
        Some(a) => {
            let url = a.get_ref().trim_end_matches('/');
            if !is_http_url(url) {
                return Err(fail(
                    a.span(),
                    format!("api \"{}\" is not an http(s) URL", a.get_ref()),
                    if github {
                        "write the API's address, like \"https://github.example.com/api/v3\""
                    } else {
                        "write the API's address, like \"https://gitlab.example.com/api/v4\""
                    },
                ));
            }
            if reqwest::Url::parse(url).is_ok_and(|u| {
                !u.username().is_empty()
                    || u.password().is_some()
                    || u.query().is_some()
                    || u.fragment().is_some()
            }) {
                return Err(fail(
                    a.span(),
                    "api holds a user, a query or a fragment".into(),
                    "write the API's address alone; the token goes in the variable token_env names",
                ));
            }
            if url.starts_with("http://") && !loopback(&url_host(url)) {
                return Err(fail(
                    a.span(),
                    "the token would cross the network unencrypted (http:// to a host that is not this one)".into(),
                    "use https://, or http:// only to a loopback address",
                ));
            }
            url.to_string()
        }
    };
    let mut labels = Vec::new();
    for l in r
        .labels
        .as_ref()
        .map(|l| l.get_ref().as_slice())
        .unwrap_or(&[])
    {
        let label = l.get_ref().trim();
        if label.is_empty() || label.contains(',') {
            return Err(fail(
                l.span(),
                format!("\"{}\" is not a label", l.get_ref()),
                "write each label on its own, without commas, like [\"deploy-failure\", \"ops\"]",
            ));
        }
        labels.push(label.to_string());
    }
    Ok(Tracker {
        api,
        repository: repo.get_ref().clone(),
        token_env,
        labels,
        close_on_success: r.close_on_success.as_ref().is_none_or(|b| *b.get_ref()),
    })
}

pub(super) fn email(
    r: &RawNotify,
    span: &Range<usize>,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Email, Diagnostic> {
    let Some(host) = &r.smtp_host else {
        return Err(fail(
            first_line(span),
            "an email notifier needs smtp_host".into(),
            "add smtp_host = \"smtp.example.com\"",
        ));
    };
    let smtp_host = host.get_ref().trim().to_string();
    if smtp_host.is_empty() || smtp_host.contains(['/', ' ', ':']) && !is_ipv6(&smtp_host) {
        return Err(fail(
            host.span(),
            format!("\"{}\" is not a host name", host.get_ref()),
            "write the relay's name or address alone, like \"smtp.example.com\"; the port goes in smtp_port",
        ));
    }
    let tls = match r.tls.as_ref().map(|t| (t, t.get_ref().as_str())) {
        None | Some((_, "starttls")) => SmtpTls::StartTls,
        Some((_, "tls")) => SmtpTls::Tls,
        Some((_, "none")) => SmtpTls::None,
        Some((t, other)) => {
            return Err(fail(
                t.span(),
                format!("unknown tls \"{other}\""),
                "write tls = \"starttls\" (port 587), \"tls\" (port 465) or \"none\" (a loopback relay)",
            ));
        }
    };
    let smtp_port = match &r.smtp_port {
        None => match tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        },
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(fail(
                    p.span(),
                    format!("smtp_port = {} is not a port", p.get_ref()),
                    "write a port from 1 to 65535, like 587",
                ));
            }
        },
    };
    let Some(from) = &r.from else {
        return Err(fail(
            first_line(span),
            "an email notifier needs from".into(),
            "add from = \"ferry <ferry@example.com>\"",
        ));
    };
    if !looks_like_mailbox(from.get_ref()) {
        return Err(fail(
            from.span(),
            format!("\"{}\" is not an email address", from.get_ref()),
            "write an address, like \"ferry@example.com\" or \"ferry <ferry@example.com>\"",
        ));
    }
    let to = match &r.to {
        Some(t) if !t.get_ref().is_empty() => t,
        Some(t) => {
            return Err(fail(
                t.span(),
                "the list of recipients is empty".into(),
                "name who gets the mail, like to = [\"ops@example.com\"]",
            ));
        }
        None => {
            return Err(fail(
                first_line(span),
                "an email notifier needs to".into(),
                "add to = [\"ops@example.com\"]",
            ));
        }
    };
    for a in to.get_ref() {
        if !looks_like_mailbox(a.get_ref()) {
            return Err(fail(
                a.span(),
                format!("\"{}\" is not an email address", a.get_ref()),
                "write an address, like \"ops@example.com\"",
            ));
        }
    }
    let username_env = r
        .username_env
        .as_ref()
        .map(|v| env_name(v, fail))
        .transpose()?;
    let password_env = r
        .password_env
        .as_ref()
        .map(|v| env_name(v, fail))
        .transpose()?;
    match (&r.username_env, &r.password_env) {
        (Some(u), None) => {
            return Err(fail(
                u.span(),
                "username_env is set without password_env".into(),
                "add password_env = \"FERRY_SMTP_PASSWORD\", or remove both to send without logging in",
            ));
        }
        (None, Some(p)) => {
            return Err(fail(
                p.span(),
                "password_env is set without username_env".into(),
                "add username_env = \"FERRY_SMTP_USER\", or remove both to send without logging in",
            ));
        }
        _ => {}
    }
    if tls == SmtpTls::None {
        if let (Some(u), false) = (&r.username_env, loopback(&smtp_host)) {
            return Err(fail(
                u.span(),
                format!("tls = \"none\" would send the SMTP password unencrypted to {smtp_host}"),
                "use tls = \"starttls\" or \"tls\"; \"none\" with credentials only to a loopback relay",
            ));
        }
        if let Some(c) = &r.ca_file {
            return Err(fail(
                c.span(),
                "ca_file is set but tls = \"none\"".into(),
                "remove ca_file, or use tls = \"starttls\" or \"tls\"",
            ));
        }
    }
    Ok(Email {
        smtp_host,
        smtp_port,
        tls,
        from: from.get_ref().trim().to_string(),
        to: to
            .get_ref()
            .iter()
            .map(|a| a.get_ref().trim().to_string())
            .collect(),
        username_env,
        password_env,
        ca_file: r
            .ca_file
            .as_ref()
            .map(|c| ca_file(c, fail, resolve))
            .transpose()?,
    })
}

/// `addr@host` or `Name <addr@host>`, as the mailer (lettre) reads an address: what `ferry
/// check` accepts is what can be sent to.
fn looks_like_mailbox(s: &str) -> bool {
    s.trim().parse::<lettre::message::Mailbox>().is_ok()
}

/// `ca_file`, resolved, read and holding at least one PEM certificate: found now, not when
/// the first failure mail is due.
fn ca_file(
    c: &toml::Spanned<String>,
    fail: &Fail,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<PathBuf, Diagnostic> {
    let path = resolve(c.get_ref());
    match std::fs::read_to_string(&path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Ok(path),
        Ok(_) => Err(fail(
            c.span(),
            format!("{} holds no PEM certificate", path.display()),
            "point ca_file at the relay's CA certificate, in PEM (-----BEGIN CERTIFICATE-----)",
        )),
        Err(e) => Err(fail(
            c.span(),
            format!("cannot read {}: {e}", path.display()),
            "point ca_file at the relay's CA certificate, in PEM; a relative path is from the config's dir",
        )),
    }
}
