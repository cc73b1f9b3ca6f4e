// Duet supervisor console: the supervisor socket (/v1/supervisor) in a page.
// Plain DOM, no build step. Text from the wire only ever goes through textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "duet.console.token";
  const state = {
    ws: null,
    waiting: new Map(), // session_id -> queue summary
    mine: new Map(),    // session_id -> conversation (summary, transcript, documents, suggestion)
    active: null,       // session_id shown
    selected: 0,        // index in the waiting list (keyboard)
    signingIn: false,
  };

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function toast(message) {
    const box = $("toast");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
  }

  function since(iso) {
    if (!iso) return "";
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    const m = Math.floor(s / 60);
    return m ? `${m}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
  }

  function short(id) { return id ? id.slice(0, 8) : ""; }

  function safeUrl(url) {
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch { return null; }
  }

  function citationLink(c) {
    const label = `${c.title || c.doc_id} (v${c.version})`;
    const href = c.url && safeUrl(c.url);
    if (!href) return el("span", { class: "cite", title: c.doc_id, text: label });
    return el("a", { href, target: "_blank", rel: "noopener noreferrer", text: label });
  }

  // --- the socket -------------------------------------------------------------------------

  function connect(token) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/supervisor?token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(url);
    state.ws = ws;
    let opened = false;
    $("status").textContent = "connecting…";
    ws.onopen = () => {
      opened = true;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("signin").hidden = true;
      $("desk").hidden = false;
      $("signout").hidden = false;
      $("status").textContent = "connected";
    };
    ws.onmessage = (msg) => handle(JSON.parse(msg.data));
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (!opened) {
        sessionStorage.removeItem(TOKEN_KEY);
        showSignin("That token was not accepted.");
        return;
      }
      $("status").textContent = "reconnecting…";
      setTimeout(() => { if (!state.ws) connect(token); }, 1000);
    };
  }

  function send(message) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      toast("Not connected; try again in a moment.");
      return false;
    }
    state.ws.send(JSON.stringify(message));
    return true;
  }

  function handle(event) {
    switch (event.type) {
      case "queue":
        state.waiting = new Map(event.waiting.map((c) => [c.session_id, c]));
        for (const held of event.mine) {
          const known = state.mine.get(held.session_id);
          if (known) Object.assign(known, held);
        }
        for (const id of [...state.mine.keys()]) {
          if (!event.mine.some((c) => c.session_id === id)) dropMine(id);
        }
        $("online").textContent = event.online.length ? `online: ${event.online.join(", ")}` : "";
        break;
      case "escalation":
        state.waiting.set(event.session_id, event);
        break;
      case "conversation":
        state.waiting.delete(event.session_id);
        state.mine.set(event.session_id, { ...event, suggestion: null });
        state.active = event.session_id;
        break;
      case "customer_message": {
        const conv = state.mine.get(event.session_id);
        if (conv && !conv.transcript.some((l) => l.seq === event.seq)) {
          conv.transcript.push({ seq: event.seq, role: "customer", text: event.text });
        }
        break;
      }
      case "suggestion": {
        const conv = state.mine.get(event.session_id);
        if (conv) conv.suggestion = event;
        break;
      }
      case "released":
      case "closed":
        dropMine(event.session_id);
        toast(`Conversation ${short(event.session_id)} ${event.type}.`);
        break;
      case "error":
        toast(`${event.code}: ${event.message}`);
        break;
      default:
        return;
    }
    render();
  }

  function dropMine(id) {
    state.mine.delete(id);
    if (state.active === id) state.active = state.mine.keys().next().value || null;
  }

  // --- actions ----------------------------------------------------------------------------

  function claim(id) { send({ type: "claim", session_id: id }); }

  function reply(text) {
    const id = state.active;
    text = (text || "").trim();
    if (!id || !text) return;
    if (send({ type: "message", session_id: id, text })) {
      const conv = state.mine.get(id);
      conv.transcript.push({ seq: Infinity, role: "human", text });
      $("reply").value = "";
      render();
    }
  }

  // --- rendering --------------------------------------------------------------------------

  function queueItem(c, index) {
    const item = el("li", { class: "item" + (index === state.selected ? " selected" : ""),
                            "data-session": c.session_id });
    item.append(
      el("div", { class: "top" },
        el("span", { class: "reason", text: c.reason || "escalated" }),
        el("span", { class: "tag", text: c.channel || "?" }),
        c.notice ? el("span", { class: "tag", text: c.notice }) : null,
        el("span", { class: "wait", "data-since": c.since || "", text: since(c.since) })),
      el("div", { class: "last", text: c.last_message || "(no message)" }),
      c.note ? el("div", { class: "last", text: `asked: “${c.note}”` }) : null,
    );
    if (c.messages && c.messages.length) {
      item.append(el("div", { class: "tag", text: `${c.messages.length} left message(s)` }));
    }
    item.append(el("button", { type: "button", class: "claim", "aria-label":
      `Claim conversation ${short(c.session_id)}`, onclick: () => claim(c.session_id),
      text: "Claim" }));
    return item;
  }

  function render() {
    const waiting = [...state.waiting.values()];
    state.selected = Math.min(state.selected, Math.max(0, waiting.length - 1));
    $("queue").replaceChildren(...waiting.map(queueItem));
    $("queue-empty").hidden = waiting.length > 0;
    $("waiting-count").textContent = String(waiting.length);
    $("mine-count").textContent = String(state.mine.size);
    $("mine").replaceChildren(...[...state.mine.values()].map((c) => {
      const item = el("li", { class: "item" + (c.session_id === state.active ? " selected" : "") },
        el("div", { class: "top" },
          el("span", { class: "reason", text: c.reason || "conversation" }),
          el("span", { class: "tag", text: c.channel || "?" })),
        el("button", { type: "button", class: "secondary", text: `Open ${short(c.session_id)}`,
                       onclick: () => { state.active = c.session_id; render(); } }));
      return item;
    }));
    renderConversation();
  }

  function renderConversation() {
    const conv = state.active && state.mine.get(state.active);
    $("conversation").hidden = !conv;
    $("nothing").hidden = !!conv;
    if (!conv) return;
    $("conv-title").textContent = `Conversation ${short(conv.session_id)}`;
    $("conv-meta").textContent = [
      `reason: ${conv.reason || "?"}`, `channel: ${conv.channel || "?"}`,
      `customer: ${conv.customer_id || "anonymous"}`,
      conv.note ? `note: “${conv.note}”` : null,
    ].filter(Boolean).join(" · ");
    const lines = [...conv.transcript].sort((a, b) => a.seq - b.seq);
    $("transcript").replaceChildren(...lines.map((line) => {
      const who = { customer: "customer", bot: "bot", human: "you / agent", system: "system" };
      const node = el("li", { class: `line ${line.role}` },
        el("div", { class: "who", text: who[line.role] || line.role }),
        el("div", { class: "text", text: line.text }));
      if (line.citations && line.citations.length) {
        node.append(el("ul", { class: "cites" },
          ...line.citations.map((c) => el("li", {}, citationLink(c)))));
      }
      return node;
    }));
    const box = $("transcript");
    box.scrollTop = box.scrollHeight;
    $("documents").replaceChildren(...(conv.documents || []).map((d) =>
      el("li", {}, citationLink(d))));
    if (!conv.documents || !conv.documents.length) {
      $("documents").append(el("li", { class: "empty", text: "none" }));
    }
    $("left").replaceChildren(...(conv.messages || []).map((m) =>
      el("li", { text: m.text })));
    if (!conv.messages || !conv.messages.length) {
      $("left").append(el("li", { class: "empty", text: "none" }));
    }
    const s = conv.suggestion;
    const panel = $("suggestion");
    if (!s) {
      panel.replaceChildren(el("p", { class: "empty",
        text: "Drafts from the knowledge base appear here when the customer writes." }));
      return;
    }
    panel.replaceChildren(
      el("div", { class: "draft", text: s.text }),
      el("ul", { class: "cites" }, ...s.citations.map((c) => el("li", {}, citationLink(c)))),
      el("p", { class: "asof", text:
        `as of ${s.as_of || "?"} · confidence ${Math.round((s.confidence || 0) * 100)}%` }),
      el("div", { class: "row" },
        el("button", { type: "button", id: "use-suggestion", class: "secondary",
          text: "Edit in reply box",
          onclick: () => { $("reply").value = s.text; $("reply").focus(); } }),
        el("button", { type: "button", id: "send-suggestion", text: "Send as is",
          onclick: () => reply(s.text) })),
    );
  }

  function showSignin(error) {
    $("signin").hidden = false;
    $("desk").hidden = true;
    $("signout").hidden = true;
    $("status").textContent = "signed out";
    $("signin-error").textContent = error || "";
    $("token").focus();
  }

  // --- wiring -----------------------------------------------------------------------------

  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (token) connect(token);
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
    state.mine.clear(); state.waiting.clear(); state.active = null;
    showSignin("");
  });
  $("reply-form").addEventListener("submit", (e) => { e.preventDefault(); reply($("reply").value); });
  $("reply").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); reply($("reply").value); }
    if (e.key === "Escape") $("reply").blur();
  });
  $("release").addEventListener("click", () => {
    if (state.active) send({ type: "release", session_id: state.active });
  });
  $("close").addEventListener("click", () => {
    if (state.active && confirm("Close this conversation?")) {
      send({ type: "close", session_id: state.active });
    }
  });
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (typing || e.ctrlKey || e.metaKey || e.altKey || $("desk").hidden) return;
    const waiting = [...state.waiting.keys()];
    if (e.key === "j") { state.selected = Math.min(state.selected + 1, waiting.length - 1); render(); }
    else if (e.key === "k") { state.selected = Math.max(state.selected - 1, 0); render(); }
    else if (e.key === "c" && waiting[state.selected]) claim(waiting[state.selected]);
    else if (e.key === "r" && state.active) { e.preventDefault(); $("reply").focus(); }
  });
  setInterval(() => {
    for (const node of document.querySelectorAll(".wait[data-since]")) {
      node.textContent = since(node.dataset.since);
    }
  }, 1000);

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) connect(saved); else showSignin("");
})();
