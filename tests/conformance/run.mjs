// The official @botpress/chat client against botsim: `node run.mjs <apiUrl> [encryptionKey]`.
// Every check that fails is printed as MISMATCH and the process exits 1.
import * as chat from '@botpress/chat'

const apiUrl = process.argv[2] ?? process.env.BOTSIM_URL
const encryptionKey = process.argv[3] ?? process.env.BOTSIM_ENCRYPTION_KEY
if (!apiUrl) {
  console.error('usage: node run.mjs <apiUrl> [encryptionKey]')
  process.exit(2)
}

let failures = 0
const check = (ok, what, detail) => {
  if (ok) {
    console.log(`ok  ${what}`)
  } else {
    failures++
    console.error(`MISMATCH  ${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`)
  }
}

const isoMs = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

// Collects signals of one type until `pred` holds, with a deadline.
const waitFor = (listener, type, pred, ms = 10000) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${type}`)), ms)
    listener.on(type, (data) => {
      if (pred(data)) {
        clearTimeout(timer)
        resolve(data)
      }
    })
    listener.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })

const expectApiError = async (what, fn, type) => {
  try {
    await fn()
    check(false, what, 'no error thrown')
  } catch (thrown) {
    check(chat.isApiError(thrown) && thrown.type === type, what, {
      type: thrown?.type,
      code: thrown?.code,
      message: thrown?.message,
    })
  }
}

async function conversationRoundTrip(client, label) {
  const { conversation } = await client.createConversation({})
  check(typeof conversation.id === 'string' && isoMs.test(conversation.createdAt), `${label}: createConversation`, conversation)

  const listener = await client.listenConversation({ id: conversation.id })
  const received = []
  listener.on('message_created', (m) => received.push(m))
  const botReply = waitFor(listener, 'message_created', (m) => m.isBot)

  const { message } = await client.createMessage({
    conversationId: conversation.id,
    payload: { type: 'text', text: 'hello from the official client' },
  })
  check(message.conversationId === conversation.id && message.userId === client.user.id, `${label}: createMessage`, message)

  const reply = await botReply
  check(reply.payload.type === 'text' && reply.payload.text.length > 0, `${label}: bot reply via listener message_created`, reply)
  check(reply.conversationId === conversation.id && reply.userId !== client.user.id, `${label}: bot reply is the bot's`, reply)
  const echo = received.find((m) => m.id === message.id)
  check(echo && echo.isBot === false, `${label}: own message echoed with isBot false`, received)
  check(received.indexOf(echo) < received.indexOf(reply), `${label}: echo before reply`, received.map((m) => m.id))

  const second = waitFor(listener, 'message_created', (m) => m.isBot && m.payload.text?.startsWith('You said'))
  await client.createMessage({ conversationId: conversation.id, payload: { type: 'text', text: 'ping pong' } })
  const echoed = await second
  check(echoed.payload.text === 'You said: ping pong', `${label}: echo bot answer`, echoed.payload)

  const { messages, meta } = await client.listMessages({ conversationId: conversation.id })
  check(messages.length === 4 && meta && typeof meta === 'object', `${label}: listMessages`, { n: messages.length, meta })
  check(messages[0].id === echoed.id, `${label}: listMessages newest first`, messages.map((m) => m.id))
  const all = await client.list.messages({ conversationId: conversation.id }).collect()
  check(all.length === 4, `${label}: list.messages().collect()`, all.length)

  const eventSignal = waitFor(listener, 'event_created', () => true)
  const { event } = await client.createEvent({ conversationId: conversation.id, payload: { type: 'custom_thing', n: 1 } })
  const evSig = await eventSignal
  check(evSig.id === event.id && evSig.isBot === false, `${label}: event_created signal`, evSig)
  const { event: got } = await client.getEvent({ id: event.id })
  check(got.payload.n === 1, `${label}: getEvent`, got)

  const { conversation: again } = await client.getConversation({ id: conversation.id })
  check(again.id === conversation.id, `${label}: getConversation`, again)
  const { participants } = await client.listParticipants({ conversationId: conversation.id })
  check(participants.some((p) => p.id === client.user.id), `${label}: listParticipants`, participants)

  await listener.disconnect()
  return conversation
}

async function main() {
  // Shared mode: POST /users hands out the key.
  const shared = await chat.Client.connect({ apiUrl })
  check(typeof shared.user.key === 'string' && shared.user.key.split('.').length === 3, 'shared: connect (createUser + key)', shared.user)
  await conversationRoundTrip(shared, 'shared')

  const { conversation: goc } = await shared.getOrCreateConversation({ id: 'CA-conformance-1' })
  check(goc.id === 'CA-conformance-1', 'getOrCreateConversation keeps our id', goc)
  const { conversation: goc2 } = await shared.getOrCreateConversation({ id: 'CA-conformance-1' })
  check(goc2.createdAt === goc.createdAt, 'getOrCreateConversation is idempotent', goc2)

  await expectApiError('empty text -> InvalidPayload', () =>
    shared.createMessage({ conversationId: goc.id, payload: { type: 'text', text: '' } }), 'InvalidPayload')
  await expectApiError('bad id -> InvalidPayload', () =>
    shared.getOrCreateConversation({ id: '+14155550100' }), 'InvalidPayload')
  await expectApiError('unknown conversation -> ResourceNotFound', () =>
    shared.getConversation({ id: 'does-not-exist' }), 'ResourceNotFound')
  const stranger = await chat.Client.connect({ apiUrl })
  await expectApiError('not a participant -> Forbidden', () =>
    stranger.listMessages({ conversationId: goc.id }), 'Forbidden')
  const raw = new chat.Client({ apiUrl })
  await expectApiError('bad key -> Unauthorized', () =>
    raw.getUser({ 'x-user-key': 'not-a-jwt' }), 'Unauthorized')

  const { user: me } = await shared.updateUser({ name: 'Conformance' })
  check(me.name === 'Conformance', 'updateUser', me)

  if (encryptionKey) {
    // Personal mode: the client signs {id: userId} with the encryption key itself.
    const personal = await chat.Client.connect({ apiUrl, encryptionKey, userId: 'caller-conformance-1' })
    check(personal.user.id === 'caller-conformance-1', 'encryption key: connect (getOrCreateUser)', personal.user)
    await conversationRoundTrip(personal, 'personal')
  }
}

try {
  await main()
} catch (thrown) {
  failures++
  console.error('MISMATCH  unexpected error:', thrown?.stack ?? thrown)
}
if (failures) {
  console.error(`${failures} mismatch(es)`)
  process.exit(1)
}
console.log('conformance: all checks passed')
process.exit(0)
