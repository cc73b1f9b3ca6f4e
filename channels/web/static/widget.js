/*! Duet web chat widget — one tag, no framework, styles in a shadow root.
 *
 *   <script src="https://support.example.com/widget.js"
 *           data-duet-url="https://support.example.com" async></script>
 *
 * data- attributes: duet-url (the gateway; default: where this script came from),
 * customer-token (a customer JWT your backend signed, PROTOCOL §0), title, open ("true").
 * JS: window.Duet.setCustomerToken(token), .open(), .close(), .send(text), .handoff().
 *
 * It speaks the chat websocket /v1/chat (docs/protocol.md §1): hello with customer_token,
 * and on every reconnect session_id + resume_token + resume_from (the last seq it showed),
 * so a network drop loses nothing and shows nothing twice (events at or below that seq are
 * ignored).
 */
(function () {
  "use strict";
  if (window.Duet && window.Duet.version) return; // loaded twice: keep the first

  var script = document.currentScript;
  var data = (script && script.dataset) || {};
  var base = (data.duetUrl || (script && script.src ? new URL(script.src).origin : location.origin))
    .replace(/\/+$/, "");
  var wsUrl = base.replace(/^http/, "ws") + "/v1/chat";
  var storeKey = "duet:" + base;

  var CSS = [
    // !important here outranks the host page's own !important rules on the host element
    ":host{all:initial!important;display:block!important;position:fixed!important;",
    "z-index:2147483000!important;right:20px!important;bottom:20px!important;",
    "font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif!important;",
    "color:#1d2433!important;--accent:#3b5bdb;--ack:#6b7280;}",
    "*{box-sizing:border-box;}",
    ".bubble{all:unset;box-sizing:border-box;width:56px;height:56px;border-radius:50%;",
    "background:var(--accent);color:#fff;display:flex;align-items:center;justify-content:center;",
    "cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);margin-left:auto;}",
    ".bubble:focus-visible,button:focus-visible,textarea:focus-visible,a:focus-visible{",
    "outline:3px solid #f59f00;outline-offset:2px;}",
    ".bubble svg{width:28px;height:28px;fill:currentColor;}",
    ".panel{display:none;flex-direction:column;width:360px;max-width:calc(100vw - 40px);",
    "height:520px;max-height:calc(100vh - 100px);background:#fff;border-radius:14px;",
    "box-shadow:0 10px 40px rgba(0,0,0,.28);overflow:hidden;margin-bottom:12px;}",
    ".panel.open{display:flex;}",
    "header{display:flex;align-items:center;gap:8px;padding:12px 14px;background:var(--accent);color:#fff;}",
    "header h2{all:unset;font-weight:600;font-size:16px;flex:1;}",
    "header button{all:unset;cursor:pointer;padding:2px 8px;border-radius:6px;font-size:20px;line-height:1;}",
    ".status{font-size:12px;padding:4px 14px;background:#fff4e6;color:#8a4b00;display:none;}",
    ".status.show{display:block;}",
    ".log{flex:1;overflow-y:auto;padding:12px 14px;display:flex;flex-direction:column;gap:8px;",
    "background:#f7f8fa;}",
    ".msg{max-width:85%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;word-wrap:break-word;}",
    ".user{align-self:flex-end;background:var(--accent);color:#fff;border-bottom-right-radius:4px;}",
    ".bot,.human{align-self:flex-start;background:#fff;border:1px solid #e3e6ec;border-bottom-left-radius:4px;}",
    ".human{border-color:#b2f2bb;background:#ebfbee;}",
    ".who{display:block;font-size:12px;font-weight:600;color:#2b8a3e;margin-bottom:2px;}",
    ".ack{color:var(--ack);font-style:italic;}",
    ".ack.streaming::after{content:' …';}",
    ".ack:not(:empty)+.answer:not(:empty){display:block;margin-top:4px;}",
    ".sources{margin-top:6px;padding-top:6px;border-top:1px solid #eceff3;font-size:12px;}",
    ".sources ol{margin:2px 0 0;padding-left:18px;}",
    ".sources a{color:var(--accent);}",
    ".asof{color:#6b7280;}",
    ".note{align-self:center;font-size:12px;color:#495057;background:#e9ecef;padding:4px 10px;border-radius:10px;}",
    ".typing{align-self:flex-start;display:none;gap:4px;padding:10px 12px;background:#fff;",
    "border:1px solid #e3e6ec;border-radius:12px;}",
    ".typing.show{display:flex;}",
    ".typing i{width:7px;height:7px;border-radius:50%;background:#adb5bd;animation:b 1s infinite;}",
    ".typing i:nth-child(2){animation-delay:.15s}.typing i:nth-child(3){animation-delay:.3s}",
    "@keyframes b{0%,80%,100%{opacity:.3}40%{opacity:1}}",
    "@media (prefers-reduced-motion:reduce){.typing i{animation:none}}",
    "form{display:flex;gap:6px;padding:10px;border-top:1px solid #e3e6ec;background:#fff;}",
    "textarea{all:unset;box-sizing:border-box;flex:1;min-height:38px;max-height:96px;padding:8px 10px;",
    "border:1px solid #ced4da;border-radius:8px;white-space:pre-wrap;overflow-y:auto;font:inherit;}",
    "form button,.person{all:unset;box-sizing:border-box;cursor:pointer;border-radius:8px;",
    "padding:8px 12px;background:var(--accent);color:#fff;font-weight:600;text-align:center;}",
    ".person[hidden]{display:none;}",
    ".person{background:#fff;color:var(--accent);border:1px solid var(--accent);font-size:13px;",
    "padding:5px 10px;margin:0 10px 8px;}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;}"
  ].join("");

  var ICON = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"/></svg>';

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  function uid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "m" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function load() {
    try { return JSON.parse(sessionStorage.getItem(storeKey) || "{}"); } catch (e) { return {}; }
  }

  // --- state ---------------------------------------------------------------------------
  var saved = load();
  var state = {
    token: data.customerToken || null,
    sessionId: saved.sessionId || null,
    resumeToken: saved.resumeToken || null,
    lastSeq: 0,           // shown so far on this page; a reload replays the conversation
    ws: null, connected: false, ready: false, wanted: false, blocked: false,
    attempts: 0, timer: null,
    queue: [],            // {obj, sent}: a message stays until its user_message is seen,
                          // and is sent again after a reconnect (the id makes it once)
    pending: {},          // client id -> the user's bubble, until the server's user_message
    turns: {},            // turn_id -> {node, ack, answer, text}
    humanTurns: {},       // turn_id of a person's message: its done adds nothing
    agent: null,
    connects: 0
  };

  function persist() {
    try {
      sessionStorage.setItem(storeKey, JSON.stringify({
        sessionId: state.sessionId, resumeToken: state.resumeToken, lastSeq: state.lastSeq}));
    } catch (e) { /* storage may be disabled: the session lasts as long as the page */ }
  }

  // --- DOM -----------------------------------------------------------------------------
  var host = el("duet-chat"); // an element name no host-page rule for div/section matches
  host.id = "duet-chat";
  host.setAttribute("data-duet", "");
  var root = host.attachShadow({mode: "open"});
  // A constructed style sheet is not an inline style: a host page whose Content-Security-
  // Policy forbids 'unsafe-inline' styles still renders the widget.
  try {
    var sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } catch (e) {
    var style = el("style");
    style.textContent = CSS;
    root.appendChild(style);
  }

  var title = data.title || "Chat with us";
  var panel = el("div", "panel");
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  panel.id = "duet-panel";
  var header = el("header");
  var h2 = el("h2", null, title);
  var closeBtn = el("button", "close", "×");
  closeBtn.type = "button";
  closeBtn.setAttribute("aria-label", "Close chat");
  header.appendChild(h2);
  header.appendChild(closeBtn);
  var status = el("div", "status");
  status.setAttribute("role", "status");
  var log = el("div", "log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", "Conversation");
  log.tabIndex = 0;
  var typing = el("div", "typing");
  typing.setAttribute("aria-hidden", "true");
  typing.innerHTML = "<i></i><i></i><i></i>";
  var typingSr = el("span", "sr");
  typingSr.setAttribute("aria-live", "polite");
  var person = el("button", "person", "Talk to a person");
  person.type = "button";
  var form = el("form");
  var label = el("label", "sr", "Your message");
  label.htmlFor = "duet-input";
  var input = el("textarea");
  input.id = "duet-input";
  input.rows = 1;
  input.placeholder = "Type your question…";
  input.setAttribute("aria-label", "Your message");
  input.maxLength = 4000;
  var sendBtn = el("button", "send", "Send");
  sendBtn.type = "submit";
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(sendBtn);
  panel.appendChild(header);
  panel.appendChild(status);
  panel.appendChild(log);
  panel.appendChild(typingSr);
  panel.appendChild(person);
  panel.appendChild(form);
  log.appendChild(typing);

  var bubble = el("button", "bubble");
  bubble.type = "button";
  bubble.innerHTML = ICON;
  bubble.setAttribute("aria-label", "Open chat");
  bubble.setAttribute("aria-expanded", "false");
  bubble.setAttribute("aria-controls", "duet-panel");
  root.appendChild(panel);
  root.appendChild(bubble);

  function scroll() { log.scrollTop = log.scrollHeight; }

  function add(node) {
    log.insertBefore(node, typing);
    scroll();
    return node;
  }

  function note(text) { return add(el("div", "note", text)); }

  function showTyping(on) {
    typing.classList.toggle("show", on);
    typingSr.textContent = on ? "The assistant is typing" : "";
    if (on) scroll();
  }

  function setStatus(text) {
    status.textContent = text || "";
    status.classList.toggle("show", !!text);
  }

  function open() {
    panel.classList.add("open");
    bubble.setAttribute("aria-expanded", "true");
    bubble.setAttribute("aria-label", "Close chat");
    state.wanted = true;
    connect();
    input.focus();
  }

  function close() {
    panel.classList.remove("open");
    bubble.setAttribute("aria-expanded", "false");
    bubble.setAttribute("aria-label", "Open chat");
    bubble.focus();
  }

  bubble.addEventListener("click", function () {
    if (panel.classList.contains("open")) close(); else open();
  });
  closeBtn.addEventListener("click", close);
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { e.preventDefault(); close(); }
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });
  person.addEventListener("click", function () { handoff(); });

  // --- turns -----------------------------------------------------------------------------
  function userBubble(text) { return add(el("div", "msg user", text)); }

  function turnOf(id) {
    var turn = state.turns[id];
    if (!turn) {
      var node = el("div", "msg bot");
      node.setAttribute("data-turn", id || "");
      var ack = el("span", "ack");
      var answer = el("span", "answer");
      node.appendChild(ack);
      node.appendChild(answer);
      turn = state.turns[id] = {node: node, ack: ack, answer: answer, text: ""};
      add(node);
    }
    return turn;
  }

  function formatAsOf(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return iso;
    return d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
  }

  function finish(turn, done) {
    turn.ack.classList.remove("streaming");
    if (done.cancelled && !turn.text) { turn.node.remove(); return; }
    // done.text is the whole reply: it settles the bubble even after a gap in the replay
    if (done.text && turn.text !== done.text) {
      var ackText = turn.ack.textContent;
      if (ackText && done.text.indexOf(ackText) === 0) {
        turn.answer.textContent = done.text.slice(ackText.length).replace(/^\s+/, "");
      } else {
        turn.ack.textContent = "";
        turn.answer.textContent = done.text;
      }
      turn.text = done.text;
    }
    var cites = done.citations || [];
    if (cites.length) {
      var box = el("div", "sources");
      box.appendChild(el("span", null, "Sources"));
      var list = el("ol");
      cites.forEach(function (c) {
        var item = el("li");
        var link;
        if (c.url && /^https?:\/\//i.test(c.url)) {
          link = el("a", null, c.title || c.doc_id);
          link.href = c.url;
          link.target = "_blank";
          link.rel = "noopener noreferrer";
        } else {
          link = el("span", null, c.title || c.doc_id);
        }
        item.appendChild(link);
        var asOf = c.updated_at || done.as_of;
        if (asOf) {
          var t = el("time", "asof", " · as of " + formatAsOf(asOf));
          t.dateTime = asOf;
          item.appendChild(t);
        }
        list.appendChild(item);
      });
      box.appendChild(list);
      turn.node.appendChild(box);
    }
    scroll();
  }

  function onEvent(ev) {
    if (ev.type === "session") {
      state.sessionId = ev.session_id;
      if (ev.resume_token) state.resumeToken = ev.resume_token;
      if (!ev.resumed) state.lastSeq = ev.seq || 0;
      persist();
      state.ready = true;
      flush();
      return;
    }
    if (ev.type === "error") {
      if (ev.code === "unauthorized" && !ev.session_id && state.sessionId) {
        // the stored session cannot be resumed (expired, or another customer): start afresh
        state.sessionId = state.resumeToken = null;
        state.lastSeq = 0;
        persist();
        reconnectNow();
        return;
      }
      if (ev.code === "unauthorized" && !ev.session_id && state.token) {
        // the customer token was refused: never carry on as someone else (a guest); the
        // host page is told and may pass a fresh token with Duet.setCustomerToken()
        state.blocked = true;
        state.wanted = false;
        drop();
        showTyping(false);
        note("Your sign-in was not accepted — please sign in again or reload the page.");
        window.dispatchEvent(new CustomEvent("duet:token-rejected"));
        return;
      }
      if (ev.session_id && ev.seq <= state.lastSeq) return;
      if (ev.seq) { state.lastSeq = ev.seq; persist(); }
      if (ev.code === "duplicate_message" || ev.code === "resume_gap" || ev.code === "no_turn") return;
      note(ev.message || "Something went wrong.");
      showTyping(false);
      return;
    }
    if (typeof ev.seq === "number") {
      if (ev.seq <= state.lastSeq) return; // shown already: a replay after reconnecting
      state.lastSeq = ev.seq;
      persist();
    }
    switch (ev.type) {
      case "user_message": {
        var mine = ev.id && state.pending[ev.id];
        if (mine) delete state.pending[ev.id]; else userBubble(ev.text);
        if (ev.id) confirm(ev.id);
        showTyping(!!ev.turn_id);
        break;
      }
      case "delta": {
        if (ev.source === "human") {
          if (ev.turn_id) state.humanTurns[ev.turn_id] = true;
          var msg = el("div", "msg human");
          msg.appendChild(el("span", "who", state.agent || "Support"));
          msg.appendChild(document.createTextNode(ev.text));
          add(msg);
          showTyping(false);
          break;
        }
        if (ev.source === "system" && !ev.turn_id) { note(ev.text); break; }
        var turn = turnOf(ev.turn_id);
        if (ev.source === "ack") {
          turn.ack.textContent += ev.text;
          turn.ack.classList.add("streaming");
        } else {
          turn.ack.classList.remove("streaming");
          // the answer's first piece after an acknowledgment starts with a space: the
          // answer has a line of its own here
          turn.answer.textContent += turn.answer.textContent ? ev.text : ev.text.replace(/^\s+/, "");
        }
        turn.text += ev.text;
        scroll();
        break;
      }
      case "done":
        showTyping(false);
        if (state.humanTurns[ev.turn_id]) { delete state.humanTurns[ev.turn_id]; break; }
        if (!state.turns[ev.turn_id] && !ev.text) break;
        finish(turnOf(ev.turn_id), ev);
        delete state.turns[ev.turn_id];
        break;
      case "escalated":
        person.hidden = true;
        note(ev.message || ("A person from our team will join shortly — you are number " +
             ev.queue_position + " in the queue."));
        break;
      case "agent_joined":
        state.agent = ev.agent && ev.agent.name;
        note((state.agent || "A person") + " joined the conversation.");
        break;
      case "agent_left":
        note(((ev.agent && ev.agent.name) || "The person") + " left; the assistant is back.");
        state.agent = null;
        person.hidden = false;
        break;
    }
  }

  // --- the socket ------------------------------------------------------------------------
  function sendRaw(obj) {
    if (state.ws && state.connected && state.ready) {
      state.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  function flush() {
    for (var i = 0; i < state.queue.length; i++) {
      var item = state.queue[i];
      if (item.sent) continue;
      if (!sendRaw(item.obj)) break;
      item.sent = true;
    }
    state.queue = state.queue.filter(function (item) {
      return !(item.sent && item.obj.type !== "message");
    });
  }

  function confirm(id) {
    state.queue = state.queue.filter(function (item) { return item.obj.id !== id; });
  }

  function connect() {
    if (state.ws || !state.wanted || state.blocked) return;
    clearTimeout(state.timer);
    var ws;
    try { ws = new WebSocket(wsUrl); } catch (e) { retry(); return; }
    state.ws = ws;
    ws.onopen = function () {
      state.connected = true;
      state.attempts = 0;
      state.connects += 1;
      setStatus("");
      var hello = {type: "hello"};
      if (state.token) hello.customer_token = state.token;
      if (state.sessionId) {
        hello.session_id = state.sessionId;
        if (state.resumeToken) hello.resume_token = state.resumeToken;
        hello.resume_from = state.lastSeq;
      }
      ws.send(JSON.stringify(hello));
      state.queue.forEach(function (item) { item.sent = false; });
      // the queue goes once the session event has come (flush() in onEvent)
    };
    ws.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      onEvent(ev);
    };
    ws.onclose = function () {
      if (state.ws !== ws) return;
      state.ws = null;
      state.connected = state.ready = false;
      if (state.wanted) {
        setStatus("Connection lost — reconnecting…");
        retry();
      }
    };
    ws.onerror = function () { /* onclose follows */ };
  }

  function retry() {
    clearTimeout(state.timer);
    var delay = Math.min(10000, 500 * Math.pow(2, state.attempts++)) * (0.8 + Math.random() * 0.4);
    state.timer = setTimeout(connect, delay);
  }

  function drop() {
    var ws = state.ws;
    if (!ws) return;
    state.ws = null;
    state.connected = state.ready = false;
    try { ws.close(); } catch (e) { /* already closed */ }
  }

  function reconnectNow() {
    drop();
    state.attempts = 0;
    connect();
  }

  window.addEventListener("offline", function () {
    drop();
    if (state.wanted) setStatus("You are offline — messages will be sent when you are back.");
  });
  window.addEventListener("online", function () { if (state.wanted) reconnectNow(); });

  // --- actions ---------------------------------------------------------------------------
  function submit() {
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
  }

  function send(text) {
    var id = uid();
    state.pending[id] = userBubble(text);
    state.queue.push({obj: {type: "message", text: text, id: id}, sent: false});
    state.wanted = true;
    showTyping(true);
    if (state.connected) flush(); else connect();
  }

  function handoff(reason) {
    var msg = {type: "handoff"};
    if (reason) msg.reason = reason;
    state.queue.push({obj: msg, sent: false});
    state.wanted = true;
    if (state.connected) flush(); else connect();
  }

  function setCustomerToken(token) {
    var changed = (token || null) !== state.token;
    state.token = token || null;
    if (!changed) return;
    if (state.ws || state.blocked) {
      // a different customer (or a fresh token): their own session
      state.sessionId = state.resumeToken = null;
      state.lastSeq = 0;
      persist();
      state.blocked = false;
      state.wanted = state.wanted || state.queue.length > 0;
      reconnectNow();
    }
  }

  function mount() {
    document.body.appendChild(host);
    if (data.open === "true") open();
    else if (state.sessionId) { state.wanted = true; connect(); } // a reload: pick up the session
  }

  window.Duet = {
    version: "1",
    open: open,
    close: close,
    send: send,
    handoff: handoff,
    setCustomerToken: setCustomerToken,
    get sessionId() { return state.sessionId; },
    get lastSeq() { return state.lastSeq; },
    get connects() { return state.connects; },
    get connected() { return state.connected; }
  };

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
