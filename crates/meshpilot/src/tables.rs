//! Column-aligned text tables laid out the way istioctl's tab writer does: every column but
//! the last is as wide as its widest cell plus `padding` spaces; the last is printed as is.
//! Unlike Go's tab writer, lines carry no trailing blanks when their last cells are empty.

/// Renders `rows` (the header first) as aligned lines, each ending in a newline.
pub fn align(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        // The last cell of a row is not part of a column, so it never widens one.
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let fill = widths[i] + padding - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', fill));
            }
        }
        let kept = out.trim_end_matches(' ').len();
        out.truncate(kept);
        out.push('\n');
    }
    out
}

/// A row from string slices, for headers.
pub fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_every_column_but_the_last() {
        let rows = vec![
            header(&["NAME", "PORT", "WHAT"]),
            header(&["a-long-name", "80", "x"]),
            header(&["b", "", "a much longer last cell"]),
            header(&["c", "8080", ""]),
        ];
        assert_eq!(
            align(&rows, 2),
            "NAME         PORT  WHAT\n\
             a-long-name  80    x\n\
             b                  a much longer last cell\n\
             c            8080\n"
        );
    }

    #[test]
    fn empty_table_is_empty() {
        assert_eq!(align(&[], 5), "");
    }
}
