//! Plain-text tables for the terminal: every column as wide as its widest cell, so columns line
//! up whatever the data (long names, dates, "required from …"), and the last column unpadded.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers: right-aligned, so their digits line up.
    Right,
}

pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&'static str, Align)]) -> Self {
        Self { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// The table as lines of text, the header first.
    pub fn render(&self) -> String {
        let width = |cell: &str| cell.chars().count();
        let widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, (h, _))| self.rows.iter().map(|r| width(&r[i])).chain([width(h)]).max().unwrap_or(0))
            .collect();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let last = cells.len() - 1;
            let line: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    let pad = " ".repeat(widths[i] - width(cell));
                    match (self.headers[i].1, i == last) {
                        (Align::Right, _) => format!("{pad}{cell}"),
                        (Align::Left, true) => cell.clone(),
                        (Align::Left, false) => format!("{cell}{pad}"),
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_their_content() {
        let mut table = Table::new(&[("NAME", Align::Left), ("POLICY", Align::Left), ("LEFT", Align::Right)]);
        table.row(vec!["alice".into(), "required from 2027-01-01 00:00:00 UTC".into(), "10".into()]);
        table.row(vec!["a-very-long-user-name".into(), "optional".into(), "9".into()]);
        table.row(vec!["bob".into(), "off".into(), "0".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        let policy_at = lines[0].find("POLICY").unwrap();
        let left_ends = lines[0].find("LEFT").unwrap() + 4;
        for line in &lines[1..] {
            let name_end = line[..policy_at].trim_end().len();
            assert!(name_end < policy_at, "{line}");
            assert!(line.chars().nth(policy_at - 1) == Some(' ') && line.chars().nth(policy_at) != Some(' '));
            assert_eq!(line.len(), left_ends, "numbers end in one column: {line}");
        }
    }
}
