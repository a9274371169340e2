//! The end-to-end tests in one binary: the real binaries and services, crashes,
//! moves and metering.

mod crash_resume;
mod daemons;
mod metering;
mod moves;
mod restores;
