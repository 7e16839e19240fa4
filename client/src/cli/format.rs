//! Output formats shared by the commands: docker's `--format` (a Go-template subset: `{{.Field}}`
//! and dotted paths into the object's JSON form, `{{json .}}`, `{{json .Field}}`, a leading
//! `table` for a header row, `json` for one JSON object per line), tables and sizes.

use serde_json::Value;

/// How to print a list of objects.
pub enum Format {
    /// The command's own table.
    Table,
    /// One JSON object per line.
    Json,
    /// A template per object, with a header row when `table` was given.
    Template { template: String, header: bool },
}

impl Format {
    pub fn parse(s: Option<&str>) -> Format {
        match s.map(str::trim) {
            None | Some("") | Some("table") => Format::Table,
            Some("json") | Some("{{json .}}") => Format::Json,
            Some(t) => match t.strip_prefix("table") {
                Some(rest) if rest.starts_with(char::is_whitespace) => Format::Template {
                    template: rest.trim_start().to_string(),
                    header: true,
                },
                _ => Format::Template {
                    template: t.to_string(),
                    header: false,
                },
            },
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "<no value>".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}:{}", show(Some(v))))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        Some(Value::Array(a)) => {
            let parts: Vec<String> = a.iter().map(|v| show(Some(v))).collect();
            format!("[{}]", parts.join(" "))
        }
        Some(other) => other.to_string(),
    }
}

/// Expand `template` against `v`. Unknown actions are an error a person can fix.
pub fn render(template: &str, v: &Value) -> Result<String, String> {
    let template = template.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed action in template {template:?}"))?;
        let action = after[..end].trim();
        let text = if let Some(arg) = action.strip_prefix("json") {
            let arg = arg.trim();
            let value = if arg == "." {
                Some(v)
            } else {
                arg.strip_prefix('.').and_then(|p| lookup(v, p))
            };
            serde_json::to_string(value.unwrap_or(&Value::Null)).map_err(|e| e.to_string())?
        } else if action == "." {
            show(Some(v))
        } else if let Some(path) = action.strip_prefix('.') {
            show(lookup(v, path))
        } else {
            return Err(format!(
                "template action {{{{{action}}}}} is not supported: use {{{{.Field}}}} or {{{{json .Field}}}}"
            ));
        };
        out.push_str(&text);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The header row of a `table` template: each `{{.Field}}` becomes its upper-case name.
pub fn header(template: &str) -> String {
    let mut out = String::new();
    let template = template.replace("\\t", "\t");
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let action = after[..end].trim();
        let name = action
            .trim_start_matches("json")
            .trim()
            .trim_start_matches('.');
        out.push_str(&upper_words(name));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn upper_words(name: &str) -> String {
    let mut out = String::new();
    let mut previous_upper = true;
    for c in name.chars() {
        if c.is_uppercase() && !previous_upper {
            out.push(' ');
        }
        previous_upper = c.is_uppercase();
        out.extend(c.to_uppercase());
    }
    out
}

/// The string fields `keys` of `v`, in order (empty where absent): one table row.
pub fn cells(v: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .map(|k| v[*k].as_str().unwrap_or("").to_string())
        .collect()
}

/// Print rows as a table whose columns are padded to their widest cell (3 spaces apart).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Print objects in `format`, with `table` the command's own table.
pub fn print_list(
    format: &Format,
    objects: &[Value],
    table: impl FnOnce(&[Value]),
) -> Result<(), String> {
    match format {
        Format::Table => table(objects),
        Format::Json => {
            for o in objects {
                println!("{o}");
            }
        }
        Format::Template {
            template,
            header: with_header,
        } => {
            if *with_header {
                println!("{}", header(template));
            }
            for o in objects {
                println!("{}", render(template, o)?);
            }
        }
    }
    Ok(())
}

/// docker's size units (decimal): `4.2MB`.
pub fn human_size(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
}

/// docker's `--memory` syntax: a number with an optional b, k, m, g suffix (binary units).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let lower = s.trim().to_lowercase();
    let lower = lower
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_alphabetic()))
        .map(str::to_string)
        .unwrap_or(lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        Some('b') => (&lower[..lower.len() - 1], 1),
        _ => (lower.as_str(), 1),
    };
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: use a number with an optional k, m or g suffix")
    })?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("invalid size {s:?}"));
    }
    Ok((n * mult as f64) as i64)
}

/// `text` cut to `max` characters with docker's ellipsis.
pub fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_expand_fields_paths_and_json() {
        let v = json!({"ID": "abc", "State": {"Status": "running"}, "Labels": {"a": "b"}});
        assert_eq!(
            render("{{.ID}}\\t{{.State.Status}}", &v).unwrap(),
            "abc\trunning"
        );
        assert_eq!(render("{{json .Labels}}", &v).unwrap(), r#"{"a":"b"}"#);
        assert_eq!(render("{{.Missing}}", &v).unwrap(), "<no value>");
        assert!(render("{{range .}}", &v).is_err());
        assert_eq!(header("{{.ID}}\t{{.RunningFor}}"), "ID\tRUNNING FOR");
        assert!(matches!(Format::parse(Some("json")), Format::Json));
        assert!(matches!(
            Format::parse(Some("table {{.ID}}")),
            Format::Template { header: true, .. }
        ));
    }

    #[test]
    fn sizes_parse_and_print_like_docker() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("100MB").unwrap(), 100 << 20);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(999), "999B");
        assert_eq!(ellipsis("abcdefgh", 5), "abcd…");
    }
}
