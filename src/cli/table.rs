//! Tables the CLI prints (`ferry status`, `ferry history`): every column as wide as its
//! widest value, so a long version, user or time never runs into the next column.

/// Rows of cells under a header, with lines of notes under a row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Row>,
}

struct Row {
    cells: Vec<String>,
    /// Lines printed under the row, indented past its first column.
    notes: Vec<String>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row {
            cells,
            notes: Vec::new(),
        });
    }

    /// Adds a line under the last row.
    pub fn note(&mut self, line: String) {
        if let Some(row) = self.rows.last_mut() {
            row.notes.push(line);
        }
    }

    /// The table as text: two spaces between columns, the last one unpadded.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let cell = |cells: &[String], i: usize| cells.get(i).cloned().unwrap_or_default();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(width(&cell(&row.cells, i)));
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, w) in widths.iter().enumerate() {
                let value = cell(cells, i);
                out.push_str(&value);
                if i + 1 < n {
                    out.push_str(&" ".repeat(w - width(&value) + 2));
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let indent = " ".repeat(widths.first().map_or(0, |w| w + 2));
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push_str(&line(&row.cells));
            for note in &row.notes {
                out.push_str(&format!("{indent}{note}\n"));
            }
        }
        out
    }
}

/// How many columns `s` takes on a terminal (one per char: what ferry prints is cleaned
/// of control characters first).
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_are_as_wide_as_their_widest_value() {
        let mut t = Table::new(&["ENV", "VERSION", "URL"]);
        t.row(vec!["staging".into(), "v1.0.0".into(), "http://a".into()]);
        t.row(vec![
            "production-eu-west".into(),
            "main-1a2b3c4-very-long".into(),
            "http://b".into(),
        ]);
        t.note("locked by alice".into());
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        // every URL starts in the same column
        let col = lines[0].find("URL").unwrap();
        assert_eq!(lines[1].find("http://a"), Some(col));
        assert_eq!(lines[2].find("http://b"), Some(col));
        assert!(lines[3].starts_with(&" ".repeat("production-eu-west".len() + 2)));
        assert!(!text.lines().any(|l| l.ends_with(' ')));
    }

    #[test]
    fn short_rows_and_empty_tables_render() {
        let mut t = Table::new(&["A", "B"]);
        assert_eq!(t.render(), "A  B\n");
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A  B\nx\n");
    }
}
