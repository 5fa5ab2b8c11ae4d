//! A terminal chat on the SDK: join a room, see its history, type to post. It keeps working
//! offline (posts queue in the local store and show as `…`) and catches up when the server
//! is back, across restarts of the program too.
//!
//! ```sh
//! chorus dev &                                   # prints a token for alice
//! TOKEN=$(chorus token --user alice)
//! curl -s -H "Authorization: Bearer $TOKEN" -d '{"type":"Chat/room","name":"Chat/room/1","readLevel":35,"writeLevel":20}' \
//!   http://127.0.0.1:8080/v1/streams
//! cargo run -p chorus-client --example chat -- alice/Chat/room/1 --token "$TOKEN"
//! ```
//!
//! Arguments: `STREAM [--url URL] [--token TOKEN] [--store FILE]`; the token may also come
//! from `CHORUS_TOKEN`. Lines typed are posted; `/older` loads the previous page; `/quit`.

use std::collections::HashSet;

use anyhow::{Context, bail};
use chorus_client::{Client, LoadState, MessagesSnapshot, NewMessage, StreamId, SyncState};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Args {
    stream: StreamId,
    url: String,
    token: String,
    store: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut stream = None;
    let mut url = "http://127.0.0.1:8080".to_owned();
    let mut token = std::env::var("CHORUS_TOKEN").ok();
    let mut store = "chat.redb".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next().context("--url needs a value")?,
            "--token" => token = Some(args.next().context("--token needs a value")?),
            "--store" => store = args.next().context("--store needs a value")?,
            path => stream = StreamId::parse_path(path),
        }
    }
    let Some(stream) = stream else {
        bail!("usage: chat publisherId/name [--url URL] [--token TOKEN] [--store FILE]");
    };
    let token = token.context("give --token or set CHORUS_TOKEN")?;
    Ok(Args { stream, url, token, store })
}

/// Prints what is new in `snapshot` since the last call: messages not shown yet (by
/// ordinal) and the state of queued posts.
struct Screen {
    shown: HashSet<u64>,
    pending_shown: HashSet<u64>,
    state: Option<LoadState>,
}

impl Screen {
    fn render(&mut self, snapshot: &MessagesSnapshot) {
        if self.state != Some(snapshot.state) {
            self.state = Some(snapshot.state);
            match (snapshot.state, &snapshot.error) {
                (LoadState::Loading, _) => println!("-- connecting; cached messages first --"),
                (LoadState::Synced, _) => println!("-- synced --"),
                (LoadState::Error, error) => println!("-- error: {error:?} --"),
            }
        }
        for message in &snapshot.value.messages {
            if self.shown.insert(message.ordinal) && message.message_type == "Chat/message" {
                println!("#{} {}: {}", message.ordinal, message.by_user_id, message.content);
            }
        }
        for local in &snapshot.value.pending {
            if self.pending_shown.insert(local.local_id) {
                match &local.state {
                    SyncState::Error(error) => {
                        println!("!  {} ({})", local.message.content, error.code)
                    }
                    _ => println!("…  {}", local.message.content),
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let client = Client::builder(&args.url, &args.token).store_path(&args.store).build()?;
    let messages = client.messages(&args.stream);
    let mut changes = messages.watch();
    let mut screen = Screen { shown: HashSet::new(), pending_shown: HashSet::new(), state: None };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    screen.render(&messages.get());
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let snapshot = changes.borrow_and_update().clone();
                screen.render(&snapshot);
            }
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                match line.trim() {
                    "" => {}
                    "/quit" => return Ok(()),
                    "/older" => {
                        // They print below as they join the collection.
                        let added = messages.next_page().await?;
                        println!("-- {added} older messages loaded --");
                    }
                    text => {
                        client.post(&args.stream, NewMessage::new("Chat/message", text)).await?;
                    }
                }
            }
        }
    }
}
