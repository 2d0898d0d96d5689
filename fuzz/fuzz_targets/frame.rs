//! Every decoder of untrusted datagrams: client requests (broker side),
//! responses (client side, without fds) and the internal messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spacer_proto::internal::{
    Message, SubspaceReady, SupervisorReply, SupervisorRequest, Trust, WorkerReply, WorkerRequest,
};
use spacer_proto::wire::{decode_reply, Request};
use spacer_proto::{check_spaces, Spaces};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let _ = check_spaces(req.spaces(), Spaces::ROOMS);
        if let Some(options) = req.options() {
            let _ = options.check(Spaces::ROOMS);
            let _ = options.used();
        }
        // What decodes must encode back to something that decodes the same.
        assert_eq!(Request::decode(&req.encode()).as_ref(), Ok(&req));
    }
    let _ = decode_reply(data, Vec::new());
    // As each end takes them (the fds are checked after decoding).
    for trust in [Trust::Counts, Trust::Kinds] {
        let _ = WorkerRequest::take(data, Vec::new(), trust);
        let _ = WorkerReply::take(data, Vec::new(), trust);
        let _ = SupervisorRequest::take(data, Vec::new(), trust);
        let _ = SupervisorReply::take(data, Vec::new(), trust);
        let _ = SubspaceReady::take(data, Vec::new(), trust);
    }
});
