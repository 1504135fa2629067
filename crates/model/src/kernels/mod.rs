//! CPU kernels that replace candle's slowest ops on the f32 path, as candle custom ops with
//! analytic backward (tested against candle's composite ops).

pub mod conv;
