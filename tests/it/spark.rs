//! Real Spark sessions (local mode): statements in every interpreter, cancel, delete, death.
