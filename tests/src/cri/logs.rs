//! The CRI container log format: one line per write (or part of one),
//! `<RFC 3339 nano timestamp> <stdout|stderr> <P|F> <text>`; `P` = partial
//! (the line continues in the next entry), `F` = full.

/// One parsed log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub timestamp: String,
    pub stream: String,
    pub partial: bool,
    pub text: String,
}

/// Parses a CRI log file's text; `Err` names the first malformed line.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("malformed CRI log line: {line:?}"));
            };
            let ok_ts = ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T');
            if !ok_ts || !matches!(stream, "stdout" | "stderr") || !matches!(tag, "P" | "F") {
                return Err(format!("malformed CRI log line: {line:?}"));
            }
            Ok(Entry {
                timestamp: ts.to_owned(),
                stream: stream.to_owned(),
                partial: tag == "P",
                text: parts.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// The full lines of `stream` ("stdout"/"stderr"), partial entries joined.
pub fn lines(entries: &[Entry], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for e in entries.iter().filter(|e| e.stream == stream) {
        cur.push_str(&e.text);
        if !e.partial {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_lines() {
        let text = "2024-01-01T00:00:00.000000001Z stdout F hello\n\
                    2024-01-01T00:00:00.000000002Z stderr P par\n\
                    2024-01-01T00:00:00.000000003Z stderr F tial\n\
                    2024-01-01T00:00:00.000000004Z stdout F \n";
        let e = parse(text).expect("valid");
        assert_eq!(lines(&e, "stdout"), vec!["hello".to_owned(), String::new()]);
        assert_eq!(lines(&e, "stderr"), vec!["partial".to_owned()]);
    }

    #[test]
    fn rejects_other_formats() {
        assert!(parse("hello\n").is_err());
        assert!(parse("2024-01-01T00:00:00Z stdin F x\n").is_err());
    }
}
