//! Talking to the ACME server with instant-acme: the account (made once, then restored from
//! its stored credentials) and one order per certificate, answered with HTTP-01.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::AcmeError;
use super::files::{AcmeDir, StoredAccount};
use crate::config::Acme as Settings;
use crate::tls::Challenges;

/// An error and its sources as one line ("client error (Connect): tcp connect error:
/// Connection refused (os error 111)"), each part once.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut at = Some(error);
    while let Some(e) = at {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        at = e.source();
    }
    parts.join(": ")
}

fn builder(settings: &Settings) -> Result<instant_acme::AccountBuilder, AcmeError> {
    match &settings.ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| AcmeError::Client {
            reason: format!("cannot trust {}: {}", ca.display(), describe(&e)),
        }),
        None => Account::builder().map_err(|e| AcmeError::Client {
            reason: describe(&e),
        }),
    }
}

/// What went wrong reaching the directory or being answered by it.
fn server_error(settings: &Settings, e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(problem) => AcmeError::Refused {
            reason: problem.to_string(),
        },
        // the connection, TLS or HTTP under it
        instant_acme::Error::Other(_)
        | instant_acme::Error::Http(_)
        | instant_acme::Error::Hyper(_) => AcmeError::Unreachable {
            directory: settings.directory.clone(),
            reason: describe(&e),
        },
        other => AcmeError::Refused {
            reason: describe(&other),
        },
    }
}

/// The account for `settings`: restored from `account.json` when it was made on the same
/// directory, else made now (terms of service agreed, the email as contact) and stored.
pub async fn account(settings: &Settings, dir: &AcmeDir) -> Result<Account, AcmeError> {
    let contact = format!("mailto:{}", settings.email);
    let stored = dir.load_account()?;
    if let Some(stored) = stored.filter(|s| s.directory == settings.directory) {
        let email = stored.email.clone();
        let account = builder(settings)?
            .from_credentials(stored.credentials)
            .await
            .map_err(|e| server_error(settings, e))?;
        if email != settings.email {
            account
                .update_contacts(&[&contact])
                .await
                .map_err(|e| server_error(settings, e))?;
            // the credentials are not given back: read them again to store the new contact
            if let Some(mut again) = dir.load_account()? {
                again.email = settings.email.clone();
                dir.save_account(&again)?;
            }
            tracing::info!(email = %settings.email, "updated the ACME account's contact");
        }
        return Ok(account);
    }
    let (account, credentials) = builder(settings)?
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| server_error(settings, e))?;
    dir.save_account(&StoredAccount {
        directory: settings.directory.clone(),
        email: settings.email.clone(),
        credentials,
    })?;
    tracing::info!(directory = %settings.directory, email = %settings.email, "made an ACME account");
    Ok(account)
}

/// Tokens put into [`Challenges`] for one order, taken out again however the order ends.
struct Answers {
    challenges: Arc<Challenges>,
    tokens: Vec<String>,
}

impl Drop for Answers {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.challenges.remove(token);
        }
    }
}

/// How long the CA gets to validate the challenges, then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Orders a certificate for `hosts` and answers its HTTP-01 challenges through
/// `challenges`; gives back the chain and the new private key, both PEM.
pub async fn obtain(
    settings: &Settings,
    account: &Account,
    hosts: &[String],
    challenges: &Arc<Challenges>,
) -> Result<(String, String), AcmeError> {
    let refused = |e: instant_acme::Error| server_error(settings, e);
    let identifiers: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(refused)?;
    let mut answers = Answers {
        challenges: challenges.clone(),
        tokens: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(refused)?;
        let host = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Refused {
                    reason: format!("the authorization for {host} is {other:?}"),
                });
            }
        }
        let mut challenge =
            authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| AcmeError::Refused {
                    reason: format!("the CA offers no HTTP-01 challenge for {host}"),
                })?;
        challenges.insert(&challenge.token, challenge.key_authorization().as_str());
        answers.tokens.push(challenge.token.clone());
        challenge.set_ready().await.map_err(refused)?;
    }
    // an order whose challenge failed may come back as an error (the order's problem)
    let status = order.poll_ready(&POLL).await.map_err(|e| match e {
        instant_acme::Error::Api(problem) => AcmeError::Validation {
            reason: problem
                .detail
                .clone()
                .unwrap_or_else(|| problem.to_string()),
        },
        other => refused(other),
    })?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Validation {
            reason: validation_errors(&mut order).await,
        });
    }
    drop(answers);
    let key = order.finalize().await.map_err(refused)?;
    let chain = order.poll_certificate(&POLL).await.map_err(refused)?;
    Ok((chain, key))
}

/// Why an order's authorizations failed, as the CA says (e.g. "Fetching
/// http://staging.example.com/.well-known/acme-challenge/…: Connection refused").
async fn validation_errors(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let host = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(problem) = &c.error {
                let detail = problem
                    .detail
                    .clone()
                    .unwrap_or_else(|| problem.to_string());
                reasons.push(format!("{host}: {detail}"));
            }
        }
    }
    if reasons.is_empty() {
        "the CA marked the order invalid without saying why".into()
    } else {
        reasons.join("; ")
    }
}
