"""What every daemon shares and nothing else needs: its life (node id, ready
file, signals, start-up and shutdown: `runtime`) and the one request
dispatcher that checks, decodes and routes each message (`dispatch`)."""
