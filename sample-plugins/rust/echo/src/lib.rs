//! The smallest plugbox plugin: hook `echo` returns its payload unchanged. Imports nothing.

use plugbox_sdk::{hooks, Result};

fn echo(payload: Vec<u8>) -> Result<Vec<u8>> {
    Ok(payload)
}

hooks! {
    "echo" => echo,
}
