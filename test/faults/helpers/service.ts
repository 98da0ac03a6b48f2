// Small HTTP helpers for a spawned service.
import { admin as ADMIN } from '../../helpers/env.js'

export { ADMIN }

export async function createCouponOver (base: string, body: Record<string, unknown>): Promise<{ id: number, totalQuantity: number }> {
  const response = await fetch(`${base}/coupons`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...ADMIN },
    body: JSON.stringify({ name: 'fault coupon', ...body }),
    signal: AbortSignal.timeout(10_000)
  })
  if (response.status !== 201) throw new Error(`coupon not created: ${response.status} ${await response.text()}`)
  return response.json() as Promise<{ id: number, totalQuantity: number }>
}
