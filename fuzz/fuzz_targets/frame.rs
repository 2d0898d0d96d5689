//! Every decoder of untrusted datagrams: client requests (broker side),
//! responses (client side, without fds) and the internal messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spacer_proto::internal::{self, SubspaceReady, SupervisorReply, SupervisorRequest, WorkerReply, WorkerRequest};
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
    let _ = internal::decode::<WorkerRequest>(data);
    if let Ok(reply) = internal::decode::<WorkerReply>(data) {
        let _ = reply.check_fds(&[]);
    }
    let _ = internal::decode::<SupervisorRequest>(data);
    let _ = internal::decode::<SupervisorReply>(data);
    let _ = internal::decode::<SubspaceReady>(data);
});
