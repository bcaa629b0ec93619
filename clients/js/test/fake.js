// A fake node for fast tests of the client's state machine: a WebSocket
// class the client is given (options.WebSocket), whose every socket the
// test opens, feeds frames and closes by hand, on mocked timers.

/** The sockets the client made, newest last. */
export class FakeNode {
  constructor() {
    this.sockets = [];
    const node = this;
    this.WebSocket = class {
      constructor(url) {
        this.url = url;
        this.sent = [];
        this.readyState = 0;
        node.sockets.push(this);
      }
      send(data) {
        this.sent.push(JSON.parse(data));
      }
      close() {
        this.readyState = 3;
      }
    };
  }

  /** The newest socket. */
  get last() {
    return this.sockets[this.sockets.length - 1];
  }

  /** Accepts the newest socket. */
  open() {
    const ws = this.last;
    ws.readyState = 1;
    ws.onopen?.();
    return ws;
  }

  /** The newest socket receives `frame`. */
  receive(frame) {
    this.last.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The node closes the newest socket with `code`. */
  close(code, reason = "") {
    const ws = this.last;
    ws.readyState = 3;
    ws.onclose?.({ code, reason });
  }
}
