//! Tributary plugin SDK (the guest side of the WIT worlds); filled in with the plugin platform.
