//! The filter language (metadata/src/filters.rs) and label field masks: every input parses or is
//! refused, never panics; a parsed filter evaluates against a record without panicking.
#![no_main]
use berth_metadata::filters::{Adaptor, Filter};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

struct Record(HashMap<String, String>);

impl Adaptor for Record {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] | ["name"] => Some("a.b-c".into()),
            ["labels", rest @ ..] => berth_metadata::filters::label_field(&self.0, rest),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines are the OR'ed filter strings of one List call.
    let filters: Vec<&str> = text.split('\n').collect();
    let labels: HashMap<String, String> = [
        ("a".to_string(), "1".to_string()),
        ("x.y".to_string(), "".to_string()),
    ]
    .into();
    if let Ok(f) = Filter::parse_all(&filters) {
        let _ = f.matches(&Record(labels.clone()));
        let _ = f.matches_all();
    }
    // Each line as a field-mask path of an Update.
    for path in &filters {
        let mut to = labels.clone();
        let _ = berth_metadata::validate::apply_label_path(path, &mut to, &labels);
        let _ = berth_metadata::validate::labels(&to);
    }
});
