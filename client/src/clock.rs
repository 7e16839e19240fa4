//! Timestamps as the CLI prints and the shim's logs carry them: RFC 3339 in UTC, from the `time`
//! crate's calendar.

use std::time::SystemTime;
use time::OffsetDateTime;

fn date_time(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// `2006-01-02T15:04:05Z` (seconds).
pub fn rfc3339(t: SystemTime) -> String {
    format!("{}Z", date_time(t))
}

/// `2006-01-02T15:04:05.000000000Z`: nine fraction digits, the shim's CRI log format.
pub fn rfc3339_nano(t: SystemTime) -> String {
    format!(
        "{}.{:09}Z",
        date_time(t),
        OffsetDateTime::from(t).nanosecond()
    )
}
