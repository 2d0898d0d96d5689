//! Options of a `Rooms` request: first steps the worker takes inside a new
//! namespace before anyone else can enter it: `lo` up in a new network
//! namespace, a host and domain name in a new UTS namespace, clock offsets
//! in a new time namespace (which only its creator can set, and only before
//! a process enters it).
//!
//! Validation is here, shared by every side: the client library can check
//! before sending, the broker refuses a bad request before the policy sees
//! it, and the worker checks again whatever the broker did.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ns::Spaces;

/// The longest host or domain name the kernel takes (`__NEW_UTS_LEN`).
pub const MAX_NAME_BYTES: usize = 64;

/// The largest clock offset, in seconds, either way: the kernel refuses a
/// time namespace whose clock would read more than `KTIME_SEC_MAX / 2`
/// (about 146 years) or less than zero.
pub const MAX_OFFSET_SECS: i64 = i64::MAX / 1_000_000_000 / 2;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A clock offset: `secs` plus `nanos` (`0 <= nanos < 10^9`), the kernel's
/// `timespec`. `-1.5` s is `{ secs: -2, nanos: 500_000_000 }`.
///
/// On the wire a two-element array `[secs, nanos]`. Parses from and prints
/// as decimal seconds, as `unshare(1)` takes them: `86400`, `-1.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(i64, u32)", into = "(i64, u32)")]
pub struct Offset {
    /// Whole seconds (may be negative).
    pub secs: i64,
    /// Nanoseconds added to `secs`, below one second.
    pub nanos: u32,
}

impl Offset {
    /// Whole seconds.
    pub const fn from_secs(secs: i64) -> Offset {
        Offset { secs, nanos: 0 }
    }

    fn total_nanos(self) -> i128 {
        i128::from(self.secs) * NANOS_PER_SEC + i128::from(self.nanos)
    }

    fn from_total_nanos(total: i128) -> Option<Offset> {
        Some(Offset {
            secs: i64::try_from(total.div_euclid(NANOS_PER_SEC)).ok()?,
            nanos: total.rem_euclid(NANOS_PER_SEC) as u32,
        })
    }

    /// Within what the kernel could ever accept (the clock's current value
    /// is checked by the worker, which reads it).
    pub fn check(self) -> Result<(), String> {
        if self.nanos >= NANOS_PER_SEC as u32 {
            return Err(format!("nanoseconds {} not below 10^9", self.nanos));
        }
        if !(-MAX_OFFSET_SECS..=MAX_OFFSET_SECS).contains(&self.secs) {
            return Err(format!(
                "{self} s is out of range (at most {MAX_OFFSET_SECS} s either way)"
            ));
        }
        Ok(())
    }

    /// `clock + self`, if the kernel would accept a time namespace whose
    /// clock reads that: not negative, at most [`MAX_OFFSET_SECS`].
    pub fn applies_to(self, clock: Offset) -> Result<(), String> {
        let sum = self.total_nanos() + clock.total_nanos();
        if sum < 0 {
            return Err(format!(
                "{self} s would set the clock before zero (it reads {clock} s)"
            ));
        }
        if sum / NANOS_PER_SEC > i128::from(MAX_OFFSET_SECS) {
            return Err(format!(
                "{self} s would set the clock past {MAX_OFFSET_SECS} s (it reads {clock} s)"
            ));
        }
        Ok(())
    }
}

impl From<(i64, u32)> for Offset {
    fn from((secs, nanos): (i64, u32)) -> Offset {
        Offset { secs, nanos }
    }
}

impl From<Offset> for (i64, u32) {
    fn from(o: Offset) -> (i64, u32) {
        (o.secs, o.nanos)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total_nanos();
        let sign = if total < 0 { "-" } else { "" };
        let abs = total.unsigned_abs();
        let (whole, frac) = (abs / NANOS_PER_SEC as u128, abs % NANOS_PER_SEC as u128);
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:09}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Why a text is not an offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OffsetParseError(String);

impl FromStr for Offset {
    type Err = OffsetParseError;

    /// Decimal seconds with at most nine fractional digits: `86400`,
    /// `-1.5`, `+0.000000001`.
    fn from_str(s: &str) -> Result<Offset, OffsetParseError> {
        let bad = |why: &str| OffsetParseError(format!("{s:?}: {why}"));
        let (neg, digits) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) {
            return Err(bad("not a number of seconds (like 86400 or -1.5)"));
        }
        if frac.len() > 9 {
            return Err(bad("more than nine fractional digits"));
        }
        if whole.len() > 12 {
            return Err(bad("out of range"));
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("out of range"))?
        };
        let frac: i128 = format!("{frac:0<9}").parse().unwrap_or(0);
        let total = whole * NANOS_PER_SEC + frac;
        let offset = Offset::from_total_nanos(if neg { -total } else { total })
            .ok_or_else(|| bad("out of range"))?;
        offset
            .check()
            .map_err(|e| OffsetParseError(e.to_string()))?;
        Ok(offset)
    }
}

/// One thing a policy rule may allow a `Rooms` request to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomOption {
    /// `loopback_up`: `lo` up in a new network namespace.
    Loopback,
    /// `hostname` and `domainname` of a new UTS namespace.
    Hostname,
    /// `monotonic_offset` and `boottime_offset` of a new time namespace.
    TimeOffsets,
}

impl RoomOption {
    /// Every option, in the order they are printed.
    pub const ALL: [RoomOption; 3] = [
        RoomOption::Loopback,
        RoomOption::Hostname,
        RoomOption::TimeOffsets,
    ];

    /// The name in a policy file and in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            RoomOption::Loopback => "loopback",
            RoomOption::Hostname => "hostname",
            RoomOption::TimeOffsets => "time-offsets",
        }
    }

    /// The option called `name` in a policy file.
    pub fn from_name(name: &str) -> Option<RoomOption> {
        RoomOption::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The namespace type a request needs for this option.
    pub fn needs(self) -> Spaces {
        match self {
            RoomOption::Loopback => Spaces::NET,
            RoomOption::Hostname => Spaces::UTS,
            RoomOption::TimeOffsets => Spaces::TIME,
        }
    }
}

impl fmt::Display for RoomOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a `Rooms` request asks the worker to do in the new namespaces.
/// The default asks for nothing: the namespaces come as the kernel makes
/// them.
///
/// ```
/// use spacer_core::{Offset, RoomOptions};
/// let opts = RoomOptions::new()
///     .loopback_up()
///     .hostname("box")
///     .boottime_offset(Offset::from_secs(86_400));
/// assert!(opts.check(spacer_core::Spaces::all()).is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomOptions {
    /// Bring `lo` up in the new network namespace.
    pub loopback_up: bool,
    /// The new UTS namespace's host name.
    pub hostname: Option<String>,
    /// The new UTS namespace's (NIS) domain name.
    pub domainname: Option<String>,
    /// Added to `CLOCK_MONOTONIC` in the new time namespace.
    pub monotonic_offset: Option<Offset>,
    /// Added to `CLOCK_BOOTTIME` (and `/proc/uptime`) in the new time
    /// namespace.
    pub boottime_offset: Option<Offset>,
}

impl RoomOptions {
    /// No options.
    pub fn new() -> RoomOptions {
        RoomOptions::default()
    }

    /// `lo` up in the new network namespace.
    pub fn loopback_up(mut self) -> RoomOptions {
        self.loopback_up = true;
        self
    }

    /// The new UTS namespace's host name.
    pub fn hostname(mut self, name: impl Into<String>) -> RoomOptions {
        self.hostname = Some(name.into());
        self
    }

    /// The new UTS namespace's domain name.
    pub fn domainname(mut self, name: impl Into<String>) -> RoomOptions {
        self.domainname = Some(name.into());
        self
    }

    /// An offset for `CLOCK_MONOTONIC` in the new time namespace.
    pub fn monotonic_offset(mut self, offset: Offset) -> RoomOptions {
        self.monotonic_offset = Some(offset);
        self
    }

    /// An offset for `CLOCK_BOOTTIME` in the new time namespace.
    pub fn boottime_offset(mut self, offset: Offset) -> RoomOptions {
        self.boottime_offset = Some(offset);
        self
    }

    /// The clock offsets asked for: the clock's name, its `clockid_t` (as
    /// `/proc/<pid>/timens_offsets` takes it), the offset.
    pub fn clock_offsets(&self) -> impl Iterator<Item = (&'static str, libc::clockid_t, Offset)> {
        [
            ("monotonic", libc::CLOCK_MONOTONIC, self.monotonic_offset),
            ("boottime", libc::CLOCK_BOOTTIME, self.boottime_offset),
        ]
        .into_iter()
        .filter_map(|(name, id, o)| Some((name, id, o?)))
    }

    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        *self == RoomOptions::default()
    }

    /// The options used, as a policy names them.
    pub fn used(&self) -> Vec<RoomOption> {
        let mut out = Vec::new();
        if self.loopback_up {
            out.push(RoomOption::Loopback);
        }
        if self.hostname.is_some() || self.domainname.is_some() {
            out.push(RoomOption::Hostname);
        }
        if self.monotonic_offset.is_some() || self.boottime_offset.is_some() {
            out.push(RoomOption::TimeOffsets);
        }
        out
    }

    /// Whether the options are well-formed and go with `spaces`: names of
    /// valid syntax, offsets in range, each option's namespace type asked
    /// for. The `Display` of the error is the protocol's reason.
    pub fn check(&self, spaces: Spaces) -> Result<(), OptionError> {
        for o in self.used() {
            if !spaces.contains(o.needs()) {
                return Err(OptionError::NeedsType(o, o.needs()));
            }
        }
        for (what, name) in [
            ("hostname", &self.hostname),
            ("domainname", &self.domainname),
        ] {
            if let Some(name) = name {
                check_name(name).map_err(|why| OptionError::Name(what, why))?;
            }
        }
        for (what, offset) in [
            ("monotonic", self.monotonic_offset),
            ("boottime", self.boottime_offset),
        ] {
            if let Some(o) = offset {
                o.check().map_err(|why| OptionError::Offset(what, why))?;
            }
        }
        Ok(())
    }
}

/// Why a request's options are not acceptable. Answered as an `invalid`
/// error before any namespace is created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// An option without its namespace type.
    #[error("option {0} needs a new {1} namespace in the same request")]
    NeedsType(RoomOption, Spaces),
    /// A bad host or domain name.
    #[error("invalid {0}: {1}")]
    Name(&'static str, String),
    /// An offset out of range.
    #[error("invalid {0} offset: {1}")]
    Offset(&'static str, String),
}

/// A host or domain name as RFC 1123 allows for host names: dot-separated
/// labels of 1 to 63 letters, digits and hyphens, not starting or ending
/// with a hyphen; at most [`MAX_NAME_BYTES`] bytes in all.
pub fn check_name(name: &str) -> Result<(), String> {
    let shown = || {
        let mut s: String = name.chars().take(MAX_NAME_BYTES + 1).collect();
        if s.len() < name.len() {
            s.push('…');
        }
        format!("{s:?}")
    };
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.contains('\0') {
        return Err(format!("{} contains a NUL byte", shown()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{} is {} bytes long (at most {MAX_NAME_BYTES})",
            shown(),
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("{} has an empty label", shown()));
        }
        if label.len() > 63 {
            return Err(format!("{} has a label longer than 63 bytes", shown()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{} contains {c:?} (letters, digits, '-' and '.' only)",
                shown()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{}: a label may not start or end with '-'",
                shown()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_like_unshare() {
        let p = |s: &str| s.parse::<Offset>();
        assert_eq!(p("86400"), Ok(Offset::from_secs(86400)));
        assert_eq!(
            p("1.5"),
            Ok(Offset {
                secs: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            p("-1.5"),
            Ok(Offset {
                secs: -2,
                nanos: 500_000_000
            })
        );
        assert_eq!(p("-0.000000001").unwrap().to_string(), "-0.000000001");
        assert_eq!(p(".25").unwrap().to_string(), "0.25");
        assert_eq!(p("+3").unwrap(), Offset::from_secs(3));
        for bad in [
            "",
            "-",
            ".",
            "1e3",
            "1.2.3",
            "0x10",
            "1.0000000001",
            " 1",
            "nan",
        ] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
        assert!(p(&MAX_OFFSET_SECS.to_string()).is_ok());
        assert!(p(&(MAX_OFFSET_SECS + 1).to_string()).is_err());
        assert!(p(&format!("-{}", MAX_OFFSET_SECS + 1)).is_err());
        assert!(p("99999999999999999999999").is_err());
    }

    #[test]
    fn offsets_against_a_clock() {
        let clock = Offset::from_secs(100);
        assert!(Offset::from_secs(-100).applies_to(clock).is_ok());
        assert!(Offset::from_secs(-101).applies_to(clock).is_err());
        assert!(Offset::from_secs(MAX_OFFSET_SECS - 100)
            .applies_to(clock)
            .is_ok());
        assert!(Offset::from_secs(MAX_OFFSET_SECS)
            .applies_to(clock)
            .is_err());
        assert!(Offset {
            secs: 0,
            nanos: 1_000_000_000
        }
        .check()
        .is_err());
    }

    #[test]
    fn names_follow_rfc_1123() {
        for good in [
            "box",
            "a",
            "9lives",
            "a-b.c-d",
            "x.example.org",
            &"a".repeat(63),
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        let long = format!("{}.{}", "a".repeat(32), "b".repeat(32));
        assert_eq!(long.len(), 65);
        for bad in [
            "",
            "-bad",
            "bad-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "é",
            "a\0b",
            &long,
            &"a".repeat(64 + 1),
            &format!("{}.b", "a".repeat(64)),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a.".repeat(32)[..63]).is_ok());
    }

    #[test]
    fn options_need_their_type() {
        let o = RoomOptions::new().loopback_up();
        assert_eq!(
            o.check(Spaces::UTS).unwrap_err().to_string(),
            "option loopback needs a new net namespace in the same request"
        );
        assert!(o.check(Spaces::NET).is_ok());
        let o = RoomOptions::new().domainname("x");
        assert_eq!(o.used(), vec![RoomOption::Hostname]);
        assert!(o.check(Spaces::NET).is_err());
        let o = RoomOptions::new().monotonic_offset(Offset::from_secs(1));
        assert_eq!(o.used(), vec![RoomOption::TimeOffsets]);
        assert!(o.check(Spaces::TIME).is_ok());
        assert!(RoomOptions::new().is_empty());
        assert!(RoomOptions::new().check(Spaces::empty()).is_ok());
    }
}
