//! Call a capability through hero_executor with a signed request, and check the
//! executor's signed answer, using the library's client.
//!
//! ```sh
//! hero_executor keygen --out agent.pem
//! hero_executor keys add <keyid> agent.pem.pub --claims agent
//! cargo run --example signed_call -- agent.pem <keyid> echo.echo '{"message":"hi"}'
//! ```
//!
//! The socket directory comes from `$HERO_SOCKET_DIR` (default `~/hero/var/sockets`).

use hero_executor::client::{Client, Signer};
use http::{HeaderMap, Method};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, keyid, capability, rest @ ..] = args.as_slice() else {
        eprintln!("usage: signed_call <key.pem> <keyid> <capability> [params-json]");
        std::process::exit(2);
    };
    let params: Value = match rest.first() {
        Some(text) => serde_json::from_str(text)?,
        None => json!({}),
    };
    let socket_dir = hero_executor::config::default_socket_dir(None)?;
    let client = Client::new(socket_dir.join("hero_executor/rpc.sock"))
        .with_signer(Signer::load(key.as_ref(), keyid.clone())?)
        // Every answer is checked against the key the executor publishes.
        .trust_published_key()
        .await?;

    let body = json!({"jsonrpc": "2.0", "id": 1, "method": capability, "params": params});
    let reply = client
        .send(Method::POST, "/rpc", HeaderMap::new(), serde_json::to_vec(&body)?)
        .await?;
    let answer: Value = serde_json::from_slice(&reply.body)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    if reply.verified {
        eprintln!("the executor's signature on this answer verified, bound to our request");
    }
    Ok(())
}
