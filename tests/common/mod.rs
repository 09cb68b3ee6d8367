#![allow(dead_code)]

pub mod kafka;
pub mod app;
pub mod proc;
