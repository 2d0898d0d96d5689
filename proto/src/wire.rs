//! The client-facing protocol: requests a client sends to the broker and the
//! responses it gets back. Documented for other implementations in
//! `docs/PROTOCOL.md`; the tests below keep that document honest.
//!
//! Every message is one datagram holding one MessagePack map with string
//! keys. A response's fds travel in the datagram's `SCM_RIGHTS` and are named
//! by position in its `fds` map.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::fd;
use crate::idmap::MapChoice;
use crate::internal::from_slice_exact;
use crate::ns::{NsType, Spaces};
use crate::options::{Offset, RoomOptions};

/// The protocol version this crate speaks; every message carries it as `v`.
pub const VERSION: u32 = 1;
/// The largest request datagram accepted (bytes). A request without
/// options is ~30; every option at its longest fits in ~230.
pub const MAX_REQUEST_BYTES: usize = 512;
/// The largest response datagram (bytes).
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// The most fds a response carries (a `Rooms` of all six types).
pub const MAX_RESPONSE_FDS: usize = 6;
/// Error reasons are cut to this many bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// A request, as decoded. `spaces` is still the raw mask: which bits are
/// acceptable is checked by [`crate::ns::check_spaces`], and the options
/// by [`RoomOptions::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// New namespaces of the types in `spaces` (cgroup ipc mnt net time uts).
    Rooms {
        /// `CLONE_NEW*` bits.
        spaces: u64,
        /// What to do in them before they are handed out.
        options: RoomOptions,
    },
    /// A new user and/or PID namespace with a serving worker inside.
    Subspace {
        /// `CLONE_NEW*` bits.
        spaces: u64,
        /// Which ids a new user namespace maps.
        map: MapChoice,
    },
}

impl Request {
    /// A `Rooms` request without options.
    pub fn rooms(spaces: u64) -> Request {
        Request::Rooms {
            spaces,
            options: RoomOptions::default(),
        }
    }

    /// The request's name on the wire and in the audit log.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Rooms { .. } => "rooms",
            Request::Subspace { .. } => "subspace",
        }
    }

    /// The raw `spaces` mask.
    pub fn spaces(&self) -> u64 {
        match *self {
            Request::Rooms { spaces, .. } | Request::Subspace { spaces, .. } => spaces,
        }
    }

    /// The options (none for a subspace).
    pub fn options(&self) -> Option<&RoomOptions> {
        match self {
            Request::Rooms { options, .. } => Some(options),
            Request::Subspace { .. } => None,
        }
    }

    /// Encodes the request as one datagram.
    pub fn encode(&self) -> Vec<u8> {
        let none = RoomOptions::default();
        let o = self.options().unwrap_or(&none);
        let frame = RequestFrame {
            v: VERSION,
            op: self.op(),
            spaces: self.spaces(),
            loopback_up: o.loopback_up,
            hostname: o.hostname.as_deref(),
            domainname: o.domainname.as_deref(),
            monotonic_offset: o.monotonic_offset,
            boottime_offset: o.boottime_offset,
            map: match self {
                Request::Subspace { map, .. } if *map != MapChoice::Root => Some(map.name()),
                _ => None,
            },
        };
        rmp_serde::to_vec_named(&frame).expect("a request always encodes")
    }

    /// Decodes a request datagram.
    pub fn decode(bytes: &[u8]) -> Result<Request, RequestError> {
        if !starts_with_map(bytes) {
            return Err(RequestError::Malformed);
        }
        // The version first, so that a newer client hears "version", not "malformed".
        let head: VersionOnly =
            rmp_serde::from_slice(bytes).map_err(|_| RequestError::Malformed)?;
        if head.v != u64::from(VERSION) {
            return Err(RequestError::Version(head.v));
        }
        let frame: RequestFrame<'_> = from_slice_exact(bytes)
            .map_err(|_| RequestError::Malformed)?
            .ok_or(RequestError::Trailing)?;
        let options = RoomOptions {
            loopback_up: frame.loopback_up,
            hostname: frame.hostname.map(str::to_owned),
            domainname: frame.domainname.map(str::to_owned),
            monotonic_offset: frame.monotonic_offset,
            boottime_offset: frame.boottime_offset,
        };
        match frame.op {
            "rooms" if frame.map.is_none() => Ok(Request::Rooms {
                spaces: frame.spaces,
                options,
            }),
            "rooms" => Err(RequestError::MapOnRooms),
            "subspace" if options.is_empty() => Ok(Request::Subspace {
                spaces: frame.spaces,
                map: match frame.map {
                    None => MapChoice::Root,
                    Some(m) => MapChoice::from_name(m).ok_or(RequestError::UnknownMap)?,
                },
            }),
            "subspace" => Err(RequestError::OptionsOnSubspace),
            _ => Err(RequestError::UnknownOp),
        }
    }
}

/// Why a request datagram was not understood. The `Display` texts are the
/// stable reasons sent back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a MessagePack map with the fields of a request.
    #[error("malformed request")]
    Malformed,
    /// A protocol version this side does not speak.
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    Version(u64),
    /// A request type this side does not know.
    #[error("unknown request")]
    UnknownOp,
    /// Room options on a `Subspace` request.
    #[error("options are for rooms requests only")]
    OptionsOnSubspace,
    /// More bytes after the request's map (a datagram carries one).
    #[error("trailing bytes after the request")]
    Trailing,
    /// A `map` on a `Rooms` request.
    #[error("map is for subspace requests only")]
    MapOnRooms,
    /// A `map` value other than `root`, `current`, `auto`.
    #[error("unknown map (root, current or auto)")]
    UnknownMap,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A request on the wire. The options are left out when not used, so a
/// request without them is what it was before they existed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFrame<'a> {
    v: u32,
    #[serde(borrow)]
    op: &'a str,
    spaces: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    loopback_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    hostname: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    domainname: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    monotonic_offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boottime_offset: Option<Offset>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    map: Option<&'a str>,
}

/// What kind of failure an error response reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The policy does not allow this peer this request (or a limit is reached).
    Denied,
    /// The request was allowed, but creating the namespaces failed.
    Failed,
    /// The request itself is wrong: malformed, unknown, or asking for
    /// namespace types the request cannot create.
    Invalid,
    /// The service cannot serve right now (worker down, audit log broken).
    Unavailable,
}

impl ErrorKind {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::Failed => "failed",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    fn from_name(s: &str) -> Option<ErrorKind> {
        [
            ErrorKind::Denied,
            ErrorKind::Failed,
            ErrorKind::Invalid,
            ErrorKind::Unavailable,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A response, without its fds: which fd goes where is implied by the
/// variant (see [`Response::fd_names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// New namespaces: fd `i` is a namespace of type `types[i]`.
    Rooms {
        /// The types, in fd order.
        types: Vec<NsType>,
    },
    /// A new subspace: fds `conn`, `pidfd`, then `user` and `pid` if present.
    Subspace {
        /// Whether a user namespace fd follows.
        user: bool,
        /// Whether a PID namespace fd follows.
        pid: bool,
    },
    /// The request failed; no fds.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// Why, for humans; stable texts for the protocol's own reasons.
        reason: String,
    },
}

impl Response {
    /// A response for a failure.
    pub fn error(kind: ErrorKind, reason: impl Into<String>) -> Response {
        let mut reason = reason.into();
        truncate_utf8(&mut reason, MAX_REASON_BYTES);
        Response::Error { kind, reason }
    }

    /// The names of the fds this response carries, in fd order.
    pub fn fd_names(&self) -> Vec<&'static str> {
        match self {
            Response::Rooms { types } => types.iter().map(|t| t.name()).collect(),
            Response::Subspace { user, pid } => {
                let mut v = vec!["conn", "pidfd"];
                if *user {
                    v.push("user");
                }
                if *pid {
                    v.push("pid");
                }
                v
            }
            Response::Error { .. } => Vec::new(),
        }
    }

    /// Encodes the response; the caller attaches the fds in
    /// [`Response::fd_names`] order.
    pub fn encode(&self) -> Vec<u8> {
        let fds: BTreeMap<&str, u32> = self
            .fd_names()
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i as u32))
            .collect();
        let frame = match self {
            Response::Rooms { .. } => ResponseFrame {
                v: VERSION,
                op: "rooms",
                fds: Some(fds),
                kind: None,
                reason: None,
            },
            Response::Subspace { .. } => ResponseFrame {
                v: VERSION,
                op: "subspace",
                fds: Some(fds),
                kind: None,
                reason: None,
            },
            Response::Error { kind, reason } => ResponseFrame {
                v: VERSION,
                op: "error",
                fds: None,
                kind: Some(kind.name()),
                reason: Some(reason),
            },
        };
        rmp_serde::to_vec_named(&frame).expect("a response always encodes")
    }
}

#[derive(Serialize, Deserialize)]
struct ResponseFrame<'a> {
    v: u32,
    #[serde(borrow)]
    op: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    fds: Option<BTreeMap<&'a str, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    kind: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    reason: Option<&'a str>,
}

/// New namespaces, one optional fd per type. The receiver owns every fd.
#[derive(Debug, Default)]
pub struct Rooms {
    /// cgroup namespace
    pub cgroup: Option<OwnedFd>,
    /// IPC namespace
    pub ipc: Option<OwnedFd>,
    /// mount namespace (`/` recursively private)
    pub mnt: Option<OwnedFd>,
    /// network namespace
    pub net: Option<OwnedFd>,
    /// time namespace
    pub time: Option<OwnedFd>,
    /// UTS namespace
    pub uts: Option<OwnedFd>,
}

impl Rooms {
    /// The slot for a room type; `None` for user and PID.
    pub fn slot_mut(&mut self, t: NsType) -> Option<&mut Option<OwnedFd>> {
        match t {
            NsType::Cgroup => Some(&mut self.cgroup),
            NsType::Ipc => Some(&mut self.ipc),
            NsType::Mnt => Some(&mut self.mnt),
            NsType::Net => Some(&mut self.net),
            NsType::Time => Some(&mut self.time),
            NsType::Uts => Some(&mut self.uts),
            NsType::User | NsType::Pid => None,
        }
    }

    /// The fd of a type, if present.
    pub fn get(&self, t: NsType) -> Option<&OwnedFd> {
        match t {
            NsType::Cgroup => self.cgroup.as_ref(),
            NsType::Ipc => self.ipc.as_ref(),
            NsType::Mnt => self.mnt.as_ref(),
            NsType::Net => self.net.as_ref(),
            NsType::Time => self.time.as_ref(),
            NsType::Uts => self.uts.as_ref(),
            NsType::User | NsType::Pid => None,
        }
    }

    /// The types present.
    pub fn spaces(&self) -> Spaces {
        Spaces::of(NsType::ALL.into_iter().filter(|&t| self.get(t).is_some()))
    }
}

/// The fds of a subspace response. The receiver owns every fd.
#[derive(Debug)]
pub struct SubspaceFds {
    /// A connection on which requests are served inside the subspace.
    pub conn: OwnedFd,
    /// A pidfd of the process serving the subspace.
    pub pidfd: OwnedFd,
    /// The new user namespace, if one was requested.
    pub user: Option<OwnedFd>,
    /// The new PID namespace, if one was requested.
    pub pid: Option<OwnedFd>,
}

/// A response decoded together with its fds.
#[derive(Debug)]
pub enum Reply {
    /// See [`Rooms`].
    Rooms(Rooms),
    /// See [`SubspaceFds`].
    Subspace(SubspaceFds),
    /// An error response.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// Why.
        reason: String,
    },
}

/// Why a response could not be believed. All its fds have been closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// Not a MessagePack map with the fields of a response.
    #[error("malformed response")]
    Malformed,
    /// A protocol version this side does not speak.
    #[error("unsupported protocol version {0} in response")]
    Version(u64),
    /// The `fds` map does not account for the received fds one to one.
    #[error("response names fds that did not arrive, or fds arrived that it does not name")]
    FdMismatch,
    /// An fd is not what its slot says.
    #[error("fd for {slot} is not a {expected}")]
    FdKind {
        /// The slot name.
        slot: &'static str,
        /// What the slot should hold.
        expected: &'static str,
    },
}

/// Decodes a response datagram and distributes its fds into their slots,
/// checking every fd's kind (`NS_GET_NSTYPE` for namespaces; pidfd and
/// socket by their own checks). On any mismatch every fd is closed and an
/// error returned; nothing is guessed.
pub fn decode_reply(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Reply, ResponseError> {
    if !starts_with_map(bytes) {
        return Err(ResponseError::Malformed);
    }
    let head: VersionOnly = rmp_serde::from_slice(bytes).map_err(|_| ResponseError::Malformed)?;
    if head.v != u64::from(VERSION) {
        return Err(ResponseError::Version(head.v));
    }
    let frame: ResponseFrame<'_> = from_slice_exact(bytes)
        .map_err(|_| ResponseError::Malformed)?
        .ok_or(ResponseError::Malformed)?;
    let names = frame.fds.unwrap_or_default();
    match frame.op {
        "error" => {
            if !names.is_empty() || !fds.is_empty() {
                return Err(ResponseError::FdMismatch);
            }
            let kind = frame
                .kind
                .and_then(ErrorKind::from_name)
                .ok_or(ResponseError::Malformed)?;
            Ok(Reply::Error {
                kind,
                reason: frame.reason.unwrap_or_default().to_owned(),
            })
        }
        "rooms" => {
            let mut slots = assign(&names, fds, |n| {
                NsType::from_name(n)
                    .filter(|t| Spaces::ROOMS.contains(t.flag()))
                    .map(NsType::name)
            })?;
            let mut rooms = Rooms::default();
            for (name, fd) in slots.drain(..) {
                let t = NsType::from_name(name).expect("checked by assign");
                check_ns(&fd, t)?;
                *rooms.slot_mut(t).expect("a room type") = Some(fd);
            }
            Ok(Reply::Rooms(rooms))
        }
        "subspace" => {
            let slots = assign(&names, fds, |n| {
                ["conn", "pidfd", "user", "pid"]
                    .into_iter()
                    .find(|&k| k == n)
            })?;
            let (mut conn, mut pidfd, mut user, mut pid) = (None, None, None, None);
            for (name, fd) in slots {
                match name {
                    "conn" => {
                        if !fd::is_unix_seqpacket(fd.as_fd()) {
                            return Err(ResponseError::FdKind {
                                slot: "conn",
                                expected: "unix seqpacket socket",
                            });
                        }
                        conn = Some(fd);
                    }
                    "pidfd" => {
                        if !fd::is_pidfd(fd.as_fd()) {
                            return Err(ResponseError::FdKind {
                                slot: "pidfd",
                                expected: "pidfd",
                            });
                        }
                        pidfd = Some(fd);
                    }
                    "user" => {
                        check_ns(&fd, NsType::User)?;
                        user = Some(fd);
                    }
                    _ => {
                        check_ns(&fd, NsType::Pid)?;
                        pid = Some(fd);
                    }
                }
            }
            match (conn, pidfd) {
                (Some(conn), Some(pidfd)) if user.is_some() || pid.is_some() => {
                    Ok(Reply::Subspace(SubspaceFds {
                        conn,
                        pidfd,
                        user,
                        pid,
                    }))
                }
                _ => Err(ResponseError::FdMismatch),
            }
        }
        _ => Err(ResponseError::Malformed),
    }
}

/// Pairs every received fd with the one name that claims its index. Names
/// must be known (`known` maps them to their static form), indices in range
/// and distinct, and every fd claimed.
fn assign(
    names: &BTreeMap<&str, u32>,
    fds: Vec<OwnedFd>,
    known: impl Fn(&str) -> Option<&'static str>,
) -> Result<Vec<(&'static str, OwnedFd)>, ResponseError> {
    if names.len() != fds.len() {
        return Err(ResponseError::FdMismatch);
    }
    let mut by_index: Vec<Option<&'static str>> = vec![None; fds.len()];
    for (&name, &idx) in names {
        let name = known(name).ok_or(ResponseError::Malformed)?;
        let slot = by_index
            .get_mut(idx as usize)
            .ok_or(ResponseError::FdMismatch)?;
        if slot.replace(name).is_some() {
            return Err(ResponseError::FdMismatch);
        }
    }
    Ok(by_index
        .into_iter()
        .map(|n| n.expect("every index claimed: counts are equal and indices distinct"))
        .zip(fds)
        .collect())
}

fn check_ns(fd: &OwnedFd, t: NsType) -> Result<(), ResponseError> {
    match fd::namespace_type(fd.as_fd()) {
        Ok(actual) if actual == t => Ok(()),
        _ => Err(ResponseError::FdKind {
            slot: t.name(),
            expected: "namespace of that type",
        }),
    }
}

/// Whether a datagram starts with a MessagePack map marker (fixmap, map16,
/// map32). Requests and responses are maps; arrays are refused.
fn starts_with_map(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns_fd(name: &str) -> OwnedFd {
        std::fs::File::open(format!("/proc/self/ns/{name}"))
            .unwrap()
            .into()
    }

    #[test]
    fn a_client_request_is_no_internal_message() {
        let client = Request::rooms(1).encode();
        let decoded = crate::internal::decode::<crate::internal::WorkerRequest>(&client);
        assert!(decoded.is_err());
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::rooms(Spaces::NET.bits()),
            Request::Subspace {
                spaces: (Spaces::USER | Spaces::PID).bits(),
                map: MapChoice::Root,
            },
            Request::Subspace {
                spaces: Spaces::USER.bits(),
                map: MapChoice::Auto,
            },
            Request::Subspace {
                spaces: Spaces::USER.bits(),
                map: MapChoice::Current,
            },
            Request::rooms(u64::MAX),
            Request::Rooms {
                spaces: Spaces::ROOMS.bits(),
                options: RoomOptions::new()
                    .loopback_up()
                    .hostname("h".repeat(64))
                    .domainname("d".repeat(64))
                    .monotonic_offset(Offset {
                        secs: i64::MIN,
                        nanos: u32::MAX,
                    })
                    .boottime_offset(Offset::from_secs(i64::MAX)),
            },
        ] {
            let bytes = r.encode();
            assert!(bytes.len() <= MAX_REQUEST_BYTES, "{}", bytes.len());
            assert_eq!(Request::decode(&bytes), Ok(r));
        }
        // Without options, the bytes are those of a request from before
        // options existed: {"v":1,"op":"rooms","spaces":1}, three keys.
        let plain = Request::rooms(1).encode();
        assert_eq!((plain[0], plain.len()), (0x83, 21));
    }

    #[test]
    fn request_errors_have_stable_reasons() {
        let mut bad_version = Request::rooms(1).encode();
        // {"v": 1, ...}: the first value after the "v" key is the positive fixint 1.
        let pos = bad_version.iter().position(|&b| b == 1).unwrap();
        bad_version[pos] = 7;
        assert_eq!(Request::decode(&bad_version), Err(RequestError::Version(7)));
        assert_eq!(
            RequestError::Version(7).to_string(),
            "unsupported protocol version 7 (this side speaks 1)"
        );

        #[derive(Serialize)]
        struct Other<'a> {
            v: u32,
            op: &'a str,
            spaces: u64,
        }
        let unknown = rmp_serde::to_vec_named(&Other {
            v: 1,
            op: "moin",
            spaces: 0,
        })
        .unwrap();
        assert_eq!(Request::decode(&unknown), Err(RequestError::UnknownOp));
        // One request per datagram: a byte after it, or a second request,
        // is refused (never a request served and one silently dropped).
        let one = Request::rooms(Spaces::UTS.bits()).encode();
        let mut plus_one = one.clone();
        plus_one.push(0);
        assert_eq!(Request::decode(&plus_one), Err(RequestError::Trailing));
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(Request::decode(&two), Err(RequestError::Trailing));
        assert!(Request::decode(&one).is_ok());
        let reply = Response::error(ErrorKind::Denied, "no").encode();
        assert!(decode_reply(&[reply.clone(), vec![0]].concat(), Vec::new()).is_err());
        assert!(decode_reply(&reply, Vec::new()).is_ok());
        assert_eq!(Request::decode(&[]), Err(RequestError::Malformed));
        assert_eq!(Request::decode(&[0xc0]), Err(RequestError::Malformed));
        // The same fields as an array are refused: requests are maps.
        let array = rmp_serde::to_vec(&Other {
            v: 1,
            op: "rooms",
            spaces: 1,
        })
        .unwrap();
        assert_eq!(Request::decode(&array), Err(RequestError::Malformed));
        #[derive(Serialize)]
        struct Extra<'a> {
            v: u32,
            op: &'a str,
            spaces: u64,
            shell: &'a str,
        }
        let extra = rmp_serde::to_vec_named(&Extra {
            v: 1,
            op: "rooms",
            spaces: 1,
            shell: "x",
        })
        .unwrap();
        assert_eq!(Request::decode(&extra), Err(RequestError::Malformed));
        #[derive(Serialize)]
        struct WithOption<'a, T> {
            v: u32,
            op: &'a str,
            spaces: u64,
            monotonic_offset: T,
        }
        let sub = rmp_serde::to_vec_named(&WithOption {
            v: 1,
            op: "subspace",
            spaces: Spaces::USER.bits(),
            monotonic_offset: (1i64, 0u32),
        })
        .unwrap();
        assert_eq!(Request::decode(&sub), Err(RequestError::OptionsOnSubspace));
        // An offset must be [secs, nanos].
        for wrong in [
            rmp_serde::to_vec_named(&WithOption {
                v: 1,
                op: "rooms",
                spaces: 1,
                monotonic_offset: 5,
            }),
            rmp_serde::to_vec_named(&WithOption {
                v: 1,
                op: "rooms",
                spaces: 1,
                monotonic_offset: (1, 2, 3),
            }),
            rmp_serde::to_vec_named(&WithOption {
                v: 1,
                op: "rooms",
                spaces: 1,
                monotonic_offset: (1, -2),
            }),
            rmp_serde::to_vec_named(&WithOption {
                v: 1,
                op: "rooms",
                spaces: 1,
                monotonic_offset: "1",
            }),
        ] {
            assert_eq!(
                Request::decode(&wrong.unwrap()),
                Err(RequestError::Malformed)
            );
        }
    }

    #[test]
    fn rooms_reply_distributes_fds_by_name() {
        let resp = Response::Rooms {
            types: vec![NsType::Net, NsType::Uts],
        };
        let bytes = resp.encode();
        let Reply::Rooms(rooms) = decode_reply(&bytes, vec![ns_fd("net"), ns_fd("uts")]).unwrap()
        else {
            panic!("not rooms")
        };
        assert_eq!(rooms.spaces(), Spaces::NET | Spaces::UTS);
    }

    #[test]
    fn rooms_reply_with_swapped_fds_is_refused() {
        let resp = Response::Rooms {
            types: vec![NsType::Net, NsType::Uts],
        };
        let err = decode_reply(&resp.encode(), vec![ns_fd("uts"), ns_fd("net")]).unwrap_err();
        assert!(matches!(err, ResponseError::FdKind { slot: "net", .. }));
    }

    #[test]
    fn fd_count_mismatches_are_refused() {
        let resp = Response::Rooms {
            types: vec![NsType::Net],
        };
        assert_eq!(
            decode_reply(&resp.encode(), vec![]).unwrap_err(),
            ResponseError::FdMismatch
        );
        assert_eq!(
            decode_reply(&resp.encode(), vec![ns_fd("net"), ns_fd("net")]).unwrap_err(),
            ResponseError::FdMismatch
        );
        let err = Response::error(ErrorKind::Denied, "no").encode();
        assert_eq!(
            decode_reply(&err, vec![ns_fd("net")]).unwrap_err(),
            ResponseError::FdMismatch
        );
    }

    #[test]
    fn error_reply_round_trips() {
        let bytes = Response::error(ErrorKind::Invalid, "out of space").encode();
        match decode_reply(&bytes, vec![]).unwrap() {
            Reply::Error { kind, reason } => {
                assert_eq!(kind, ErrorKind::Invalid);
                assert_eq!(reason, "out of space");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let r = Response::error(ErrorKind::Failed, "é".repeat(MAX_REASON_BYTES));
        let Response::Error { reason, .. } = r else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert!(reason.chars().all(|c| c == 'é'));
        assert!(
            Response::error(ErrorKind::Failed, "x".repeat(10_000))
                .encode()
                .len()
                < MAX_RESPONSE_BYTES
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_request_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn random_bytes_never_panic_response_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_reply(&bytes, Vec::new());
        }

        #[test]
        fn mutated_requests_never_panic(spaces in any::<u64>(), idx in 0usize..40, byte in any::<u8>()) {
            let mut bytes = Request::rooms(spaces).encode();
            let i = idx % bytes.len();
            bytes[i] = byte;
            let _ = Request::decode(&bytes);
        }
    }
}
