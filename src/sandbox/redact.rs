//! Known secret values, masked in what ferry records.

/// Known secret values, masked as `***` in everything ferry stores, shows or sends: step
/// output, deployment messages, the app log. Values shorter than [`Redactor::MIN_LEN`] are
/// not masked: they would hide ordinary words and numbers.
#[derive(Default)]
pub struct Redactor {
    secrets: std::sync::RwLock<Vec<String>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.read().len())
    }
}

impl Redactor {
    pub const MIN_LEN: usize = 6;
    pub const MASK: &str = "***";

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<String>> {
        self.secrets.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds secret values; short and known ones are skipped.
    pub fn add<I, S>(&self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for value in values {
            let value = value.as_ref().trim();
            if value.len() >= Self::MIN_LEN && !secrets.iter().any(|s| s == value) {
                secrets.push(value.to_string());
                changed = true;
            }
        }
        if changed {
            // longest first, so a secret holding another is masked whole
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Adds the values of ferry's own environment variables whose names say they are
    /// secret (`*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*KEY*`, `*CREDENTIAL*`), and `extra`.
    pub fn add_process_env(&self, extra: &[&str]) {
        let secret_name = |k: &str| {
            let k = k.to_ascii_uppercase();
            ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"]
                .iter()
                .any(|w| k.contains(w))
        };
        let values: Vec<String> = std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.to_string_lossy();
                secret_name(&k) || extra.contains(&k.as_ref())
            })
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .collect();
        self.add(values);
    }

    /// `text` with every known secret replaced by [`Redactor::MASK`].
    pub fn redact(&self, text: &str) -> String {
        let secrets = self.read();
        let mut out = text.to_string();
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), Self::MASK);
            }
        }
        out
    }

    /// Like [`Redactor::redact`], for raw output bytes.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let secrets = self.read();
        if secrets.is_empty() {
            return std::borrow::Cow::Borrowed(bytes);
        }
        let text = String::from_utf8_lossy(bytes);
        if !secrets.iter().any(|s| text.contains(s.as_str())) {
            return std::borrow::Cow::Borrowed(bytes);
        }
        drop(secrets);
        std::borrow::Cow::Owned(self.redact(&text).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_masks_known_values_longest_first_and_skips_short_ones() {
        let r = Redactor::default();
        r.add(["hunter2-secret", "hunter2-secret-longer", "abc", ""]);
        assert_eq!(
            r.redact("a hunter2-secret-longer and hunter2-secret, abc"),
            "a *** and ***, abc"
        );
        assert_eq!(&*r.redact_bytes(b"nothing here"), b"nothing here");
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
