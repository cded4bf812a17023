//! Frames on the agent link: what an agent (or a stranger before
//! enrollment) sends the controller, and what the controller sends agents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_proto::{
    read_any, read_frame_within, AgentMessage, ControllerMessage, DataMessage, DataReply,
};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let _ = read_any::<_, AgentMessage>(&mut &data[..]).await;
        let _ = read_frame_within::<_, AgentMessage>(&mut &data[..], 64 * 1024).await;
        let _ = read_any::<_, ControllerMessage>(&mut &data[..]).await;
        let _ = read_any::<_, DataMessage>(&mut &data[..]).await;
        let _ = read_any::<_, DataReply>(&mut &data[..]).await;
    });
});
