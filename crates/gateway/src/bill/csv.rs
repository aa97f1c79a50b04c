//! Reading the CSV every gateway's bill is written in: cells split on commas (a cell may
//! be double-quoted), columns found by header name, never by position, and each cell
//! read as the column needs (text, an amount in yuan, a time), every failure naming the
//! file, line and column. A gateway says how its cells are dressed ([`Dress`]: Alipay
//! pads text with a TAB, WeChat Pay prefixes every cell with a backtick).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::BillError;
use order_closer_core::money::parse_minor;

/// Cell text longer than this is shortened in an error message.
const MAX_ECHO_CHARS: usize = 40;

/// How a gateway writes its cells, to be undone before reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dress {
    /// Padding around the text only (trimmed).
    Plain,
    /// One backtick before the text (so that spreadsheets keep long numbers), then
    /// padding.
    Backtick,
}

impl Dress {
    /// The cell's text.
    pub fn undress(self, cell: &str) -> &str {
        let cell = cell.trim();
        match self {
            Self::Plain => cell,
            Self::Backtick => cell.strip_prefix('`').unwrap_or(cell).trim(),
        }
    }
}

/// The header row: where each column is.
#[derive(Debug, Clone)]
pub struct Header {
    /// Number of cells in the header.
    width: usize,
    /// Column index by (normalized) name; the first occurrence wins.
    index: HashMap<String, usize>,
    dress: Dress,
}

/// A header name as compared: trimmed, without a byte-order mark, half-width
/// parentheses made full-width.
pub fn normalize_column(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .replace('(', "（")
        .replace(')', "）")
}

impl Header {
    /// Reads the header row at `line_no` of `file`; every `required` column must be in it.
    pub fn read(
        line: &str,
        line_no: usize,
        file: &str,
        required: &[&str],
        dress: Dress,
    ) -> Result<Self, BillError> {
        let cells = split_cells(line);
        let mut index = HashMap::new();
        for (i, cell) in cells.iter().enumerate() {
            index.entry(normalize_column(cell)).or_insert(i);
        }
        if let Some(missing) = required.iter().find(|c| !index.contains_key(**c)) {
            return Err(BillError::MissingColumn {
                file: file.to_owned(),
                line: line_no,
                column: (*missing).to_owned(),
            });
        }
        Ok(Self {
            width: cells.len(),
            index,
            dress,
        })
    }

    /// Splits a data row, which must have as many cells as the header.
    pub fn row<'a>(
        &'a self,
        line: &str,
        line_no: usize,
        file: &'a str,
    ) -> Result<Row<'a>, BillError> {
        let cells = split_cells(line);
        if cells.len() != self.width {
            return Err(BillError::CellCount {
                file: file.to_owned(),
                line: line_no,
                found: cells.len(),
                expected: self.width,
            });
        }
        Ok(Row {
            header: self,
            cells,
            line: line_no,
            file,
        })
    }
}

/// A data row, read cell by cell.
#[derive(Debug)]
pub struct Row<'a> {
    header: &'a Header,
    cells: Vec<String>,
    /// 1-based line number.
    pub line: usize,
    file: &'a str,
}

impl Row<'_> {
    /// The text of a column ("" when the header has no such column).
    pub fn cell(&self, column: &str) -> &str {
        self.header
            .index
            .get(column)
            .and_then(|i| self.cells.get(*i))
            .map_or("", |c| self.header.dress.undress(c))
    }

    /// An error about a column of this row.
    pub fn bad(&self, column: &str, problem: String) -> BillError {
        BillError::BadCell {
            file: self.file.to_owned(),
            line: self.line,
            column: column.to_owned(),
            problem,
        }
    }

    /// A column that must not be empty.
    pub fn required(&self, column: &str) -> Result<&str, BillError> {
        match self.cell(column) {
            "" => Err(self.bad(column, "is empty".to_owned())),
            text => Ok(text),
        }
    }

    /// An amount in yuan, as minor units.
    pub fn amount(&self, column: &str) -> Result<i64, BillError> {
        let text = self.cell(column);
        parse_minor(text)
            .map_err(|_| self.bad(column, format!("{:?} is not an amount", echo(text))))
    }

    /// A time read by `parse` (which names its format in `format`); None when empty.
    pub fn time(
        &self,
        column: &str,
        parse: fn(&str) -> Option<DateTime<Utc>>,
        format: &str,
    ) -> Result<Option<DateTime<Utc>>, BillError> {
        let text = self.cell(column);
        if text.is_empty() {
            return Ok(None);
        }
        parse(text)
            .map(Some)
            .ok_or_else(|| self.bad(column, format!("{:?} is not a time ({format})", echo(text))))
    }
}

/// Splits a CSV line on commas. A cell starting with `"` runs to the matching quote (`""`
/// inside is a quote), and whatever follows up to the next comma (a TAB) is kept. An
/// unterminated quote takes the rest of the line.
pub fn split_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut cell = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        cell.push('"');
                    } else {
                        break;
                    }
                } else {
                    cell.push(c);
                }
            }
        }
        let mut ended = true;
        for c in chars.by_ref() {
            if c == ',' {
                ended = false;
                break;
            }
            cell.push(c);
        }
        cells.push(cell);
        if ended {
            return cells;
        }
    }
}

/// The file's lines, without a byte-order mark or `\r` line ends.
pub fn lines(text: &str) -> Vec<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

/// Cell text fit for an error message: shortened, with control characters escaped
/// ([`order_closer_core::text::shortened`]).
pub fn echo(text: &str) -> String {
    order_closer_core::text::shortened(text, MAX_ECHO_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_plain_and_quoted_cells() {
        assert_eq!(split_cells(""), vec![""]);
        assert_eq!(split_cells("a\t,b,"), vec!["a\t", "b", ""]);
        assert_eq!(split_cells("\"x,y\"\t,\"a\"\"b\""), vec!["x,y\t", "a\"b"]);
        assert_eq!(split_cells("\"open,end"), vec!["open,end"]);
    }

    #[test]
    fn cells_are_undressed_and_read_by_column() {
        let header = Header::read("a,b,c", 1, "f", &["a", "c"], Dress::Backtick).unwrap();
        let row = header.row("`x,`12.34, `", 2, "f").unwrap();
        assert_eq!((row.cell("a"), row.cell("c"), row.cell("z")), ("x", "", ""));
        assert_eq!(row.amount("b").unwrap(), 1234);
        let err = row.required("c").unwrap_err().to_string();
        assert!(err.contains("f line 2, column c: is empty"), "{err}");
        let err = Header::read("a,b", 1, "f", &["c"], Dress::Plain)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column c"), "{err}");
        let err = header.row("`x", 3, "f").unwrap_err().to_string();
        assert!(err.contains("1 cells, but the header has 3"), "{err}");
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        let long = format!("\u{1b}{}", "x".repeat(100));
        let short = echo(&long);
        assert!(
            short.starts_with("\\u{1b}x") && short.ends_with('…'),
            "{short}"
        );
        assert!(!short.chars().any(char::is_control));
    }
}
