#![allow(dead_code)]

pub mod kafka;
