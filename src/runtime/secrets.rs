//! An environment's `env_file`: its values reach the app and are masked everywhere else.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::RuntimeError;

/// Values from an `env_file`. `Debug` shows the keys only, never the values.
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// Reads `KEY=VALUE` lines; blank lines, `#` comments and a leading `export ` are allowed,
    /// and a value in matching quotes loses them.
    pub fn read(path: &Path) -> Result<Secrets, RuntimeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::EnvFile {
            path: path.to_path_buf(),
            source,
        })?;
        let mut vars = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(RuntimeError::EnvFileSyntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            };
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(RuntimeError::EnvFileSyntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            }
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            vars.insert(key.to_string(), unquoted.to_string());
        }
        Ok(Secrets(vars))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// True when the file set no variable.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values, for [`crate::sandbox::Redactor`] to mask.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(String::as_str)
    }
}
