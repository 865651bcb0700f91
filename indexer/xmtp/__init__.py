"""XMTP: the binding signature, the inbox identity log and its association state, the network client."""
