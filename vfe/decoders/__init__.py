"""One module per decoding library; `vfe.video` names them and opens videos with them."""
